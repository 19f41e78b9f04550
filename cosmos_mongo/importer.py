"""Importing the predecessor's SQLite database (``outputs/cosmos.db``) into the store.

The tables are read in batches and each row is converted on its own: JSON text becomes
documents, naive or ISO-8601 datetimes become aware UTC, ids are kept. A row that cannot be
converted is reported as invalid with the reason and the import goes on. A row whose id is
already stored is skipped: as "already imported" when the stored document is the same, and
as "differs" (left unchanged) when it is not, so re-running imports nothing twice and
overwrites nothing. ``job_queue`` rows are counted and skipped: they describe the
predecessor's pending work, not data this product keeps.

Legacy enhancement keys in prompt parameters are imported as they are; the helpers read them,
and ``migrate`` tidies them afterwards. The ``enhanced`` flag is stored as a real boolean
(the predecessor's ``1`` or ``"true"`` becomes ``true``, a false value is dropped), because a
server's partial index matches only ``true``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence, Set
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

from cosmos_mongo import queries as q
from cosmos_mongo import validation as v
from cosmos_mongo.errors import InvalidInputError
from cosmos_mongo.legacy import parse_time
from cosmos_mongo.models import utc_now
from cosmos_mongo.ops import Blocking, Find, Flow, InsertMany, reported
from cosmos_mongo.ops import Progress as OpsProgress

log = logging.getLogger(__name__)

Progress = OpsProgress  # the importer's totals are always known
"""Called as ``progress(table, rows_done, rows_total)`` after each batch."""

MAX_LISTED_PROBLEMS = 1000
_PROMPT_COLUMNS = "id, prompt_text, created_at, inputs, parameters"
_RUN_COLUMNS = (
    "id, prompt_id, model_type, status, created_at, updated_at, started_at, completed_at, "
    "execution_config, outputs, metadata, log_path, error_message, rating"
)


class ImportCounts(BaseModel):
    imported: int = 0
    skipped: int = 0
    invalid: int = 0


Outcome = Literal["invalid", "skipped", "adjusted"]


class ImportProblem(BaseModel):
    table: str
    row_id: str | None
    outcome: Outcome
    reason: str


class ImportReport(BaseModel):
    """What :meth:`CosmosStore.import_sqlite` did (or, with ``dry_run``, would do)."""

    source: str
    dry_run: bool
    prompts: ImportCounts = Field(default_factory=ImportCounts)
    runs: ImportCounts = Field(default_factory=ImportCounts)
    job_queue_skipped: int = Field(default=0, description="Rows of job_queue, not imported.")
    problems: list[ImportProblem] = Field(
        default_factory=list,
        description="Invalid rows, rows left unchanged because they differ, adjusted rows "
        f"(at most {MAX_LISTED_PROBLEMS}; rows already imported are only counted).",
    )
    problems_not_listed: int = 0

    def note(self, table: str, row_id: str | None, outcome: Outcome, reason: str) -> None:
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append(
                ImportProblem(table=table, row_id=row_id, outcome=outcome, reason=reason)
            )
        else:
            self.problems_not_listed += 1


class _Invalid(ValueError):
    """A row that cannot be converted; the message is the reason."""


def _json_object(value: Any, column: str, *, required: bool) -> dict[str, Any]:
    if value is None or value == "":
        if required:
            raise _Invalid(f"{column} is empty")
        return {}
    try:
        decoded = json.loads(value) if isinstance(value, str | bytes) else value
    except json.JSONDecodeError as exc:
        raise _Invalid(f"{column} is not valid JSON ({exc.msg} at {exc.pos})") from exc
    if decoded is None:
        return {}
    if not isinstance(decoded, dict):
        raise _Invalid(f"{column} is JSON but not an object")
    try:
        return v.check_document_fields(decoded, column)
    except InvalidInputError as exc:
        raise _Invalid(str(exc)) from exc


def _time(value: Any, column: str) -> datetime | None:
    if value is None or value == "":
        return None
    parsed = (
        datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else parse_time(value)
    )
    if parsed is None:
        raise _Invalid(f"{column} is not a date and time: {str(value)[:40]!r}")
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)


def _checked(check: Callable[..., Any], value: Any, *args: Any) -> Any:
    try:
        return check(value, *args)
    except InvalidInputError as exc:
        raise _Invalid(str(exc)) from exc


_TRUE_FLAGS: Final = (True, 1, "1", "true", "True", "TRUE", "yes")
_FALSE_FLAGS: Final = (False, 0, "0", "false", "False", "FALSE", "no", "", None)


def _real_flag(parameters: dict[str, Any]) -> str | None:
    """Make ``parameters.enhanced`` a real boolean (or absent); a note if it was changed."""
    if "enhanced" not in parameters or parameters["enhanced"] is True:
        return None
    value = parameters.pop("enhanced")
    # 1 == True in Python; compare types too so 1.5 or "maybe" are not read as a flag.
    if any(type(value) is type(flag) and value == flag for flag in _TRUE_FLAGS):
        parameters["enhanced"] = True
        return f"parameters.enhanced {value!r} stored as true"
    if not any(type(value) is type(flag) and value == flag for flag in _FALSE_FLAGS):
        raise _Invalid(f"parameters.enhanced must be a boolean, got {value!r}")
    return f"parameters.enhanced {value!r} dropped (not enhanced)"


def convert_prompt(row: sqlite3.Row, now: datetime) -> tuple[dict[str, Any], str | None]:
    """A prompt document from a ``prompts`` row, and a note if something was adjusted."""
    created = _time(row["created_at"], "created_at")
    parameters = _json_object(row["parameters"], "parameters", required=True)
    notes = [_real_flag(parameters)]
    document = {
        "_id": _checked(v.check_prompt_id, row["id"], "id"),
        "prompt_text": _checked(v.check_text, row["prompt_text"], "prompt_text"),
        "inputs": _json_object(row["inputs"], "inputs", required=True),
        "parameters": parameters,
        "created_at": created or now,
    }
    if not created:
        notes.append("created_at was empty; set to the import time")
    return document, "; ".join(note for note in notes if note) or None


def convert_run(row: sqlite3.Row) -> dict[str, Any]:
    """A run document from a ``runs`` row."""
    created = _time(row["created_at"], "created_at")
    if created is None:
        raise _Invalid("created_at is empty")
    document: dict[str, Any] = {
        "_id": _checked(v.check_run_id, row["id"], "id"),
        "prompt_id": _checked(v.check_prompt_id, row["prompt_id"], "prompt_id"),
        "model_type": _checked(v.check_text, row["model_type"], "model_type", 50),
        "status": _checked(v.check_text, row["status"], "status", 50),
        "execution_config": _json_object(
            row["execution_config"], "execution_config", required=False
        ),
        "outputs": _json_object(row["outputs"], "outputs", required=False),
        "metadata": _json_object(row["metadata"], "metadata", required=False),
        "created_at": created,
        "updated_at": _time(row["updated_at"], "updated_at") or created,
    }
    for column in ("started_at", "completed_at"):
        if (value := _time(row[column], column)) is not None:
            document[column] = value
    for column, limit in (("log_path", 4096), ("error_message", v.MAX_STRING_CHARS)):
        if row[column] not in (None, ""):
            document[column] = _checked(v.check_text, row[column], column, limit)
    if row["rating"] is not None:
        document["rating"] = _checked(v.check_rating, row["rating"], "rating")
    return document


def _open(path: Path) -> sqlite3.Connection:
    try:
        found = path.is_file()
    except OSError as exc:  # a name too long for the file system, a loop of links...
        raise InvalidInputError("path", f"cannot be read: {exc.strerror or exc}") from exc
    if not found:
        raise InvalidInputError("path", f"no such file: {path}")
    try:
        # Quoted: a "?" or "#" in the path is part of the name, not of the URI's query.
        connection = sqlite3.connect(
            f"file:{quote(str(path))}?mode=ro", uri=True, check_same_thread=False
        )
        connection.row_factory = sqlite3.Row
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    except sqlite3.DatabaseError as exc:
        raise InvalidInputError("path", f"is not a SQLite database: {exc}") from exc
    missing = {"prompts", "runs"} - tables
    if missing:
        connection.close()
        raise InvalidInputError(
            "path", f"is not a predecessor database: no {', '.join(sorted(missing))} table"
        )
    return connection


def _fetch(connection: sqlite3.Connection, sql: str) -> list[sqlite3.Row]:
    return connection.execute(sql).fetchall()


def import_sqlite(
    path: object,
    batch_size: object = 500,
    dry_run: object = False,
    progress: Progress | None = None,
) -> Flow[ImportReport]:
    """Import prompts then runs; see the module docstring for the rules."""
    source = Path(str(path)) if isinstance(path, str | Path) else None
    if source is None:
        raise InvalidInputError("path", "must be a file path")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or not 1 <= batch_size <= 10_000
    ):
        raise InvalidInputError("batch_size", "must be a whole number from 1 to 10000")
    if not isinstance(dry_run, bool):
        raise InvalidInputError("dry_run", "must be true or false")
    v.check_progress(progress)
    # Every read of the file is a Blocking step: the async twin makes it on a worker thread.
    connection: sqlite3.Connection = yield from Blocking(partial(_open, source))
    report = ImportReport(source=str(source), dry_run=dry_run)
    try:
        known = yield from _import_prompts(connection, batch_size, dry_run, report, progress)
        yield from _import_runs(connection, batch_size, dry_run, report, progress, known)
        names = yield from Blocking(partial(_fetch, connection, "SELECT name FROM sqlite_master"))
        if "job_queue" in {row[0] for row in names}:
            counted = yield from Blocking(
                partial(_fetch, connection, "SELECT count(*) FROM job_queue")
            )
            report.job_queue_skipped = counted[0][0]
    finally:
        connection.close()
    return report


def _import_prompts(
    connection: sqlite3.Connection,
    batch_size: int,
    dry_run: bool,
    report: ImportReport,
    progress: Progress | None,
) -> Flow[set[str]]:
    """Import the prompts table; returns the ids imported, for the runs that follow."""
    now = utc_now()
    counted = yield from Blocking(partial(_fetch, connection, "SELECT count(*) FROM prompts"))
    total = counted[0][0]
    done = 0
    imported: set[str] = set()
    filled_in: set[str] = set()  # rows whose created_at the import supplied
    sql = f"SELECT {_PROMPT_COLUMNS} FROM prompts ORDER BY rowid"
    cursor = yield from Blocking(partial(connection.execute, sql))
    while rows := (yield from Blocking(partial(cursor.fetchmany, batch_size))):
        converted = []
        for row in rows:
            try:
                document, adjusted = convert_prompt(row, now)
            except _Invalid as exc:
                report.prompts.invalid += 1
                report.note("prompts", _row_id(row), "invalid", str(exc))
                continue
            if adjusted:
                report.note("prompts", document["_id"], "adjusted", adjusted)
            if row["created_at"] in (None, ""):
                filled_in.add(document["_id"])
            converted.append(document)
        fresh = yield from _store_new(
            q.PROMPTS, converted, report.prompts, report, dry_run, filled_in
        )
        imported.update(document["_id"] for document in fresh)
        done += len(rows)
        log.debug("import-sqlite: prompts %d/%d", done, total)
        yield from reported(progress, "prompts", done, total)
    return imported


def _import_runs(
    connection: sqlite3.Connection,
    batch_size: int,
    dry_run: bool,
    report: ImportReport,
    progress: Progress | None,
    known_prompts: set[str],
) -> Flow[None]:
    """Import the runs table; a run whose prompt exists nowhere is invalid."""
    counted = yield from Blocking(partial(_fetch, connection, "SELECT count(*) FROM runs"))
    total = counted[0][0]
    done = 0
    sql = f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY rowid"
    cursor = yield from Blocking(partial(connection.execute, sql))
    while rows := (yield from Blocking(partial(cursor.fetchmany, batch_size))):
        converted = []
        for row in rows:
            try:
                converted.append(convert_run(row))
            except _Invalid as exc:
                report.runs.invalid += 1
                report.note("runs", _row_id(row), "invalid", str(exc))
        referenced = sorted({document["prompt_id"] for document in converted} - known_prompts)
        stored = yield from Find(q.PROMPTS, {"_id": {"$in": referenced}}, projection={"_id": 1})
        existing = known_prompts | {document["_id"] for document in stored}
        with_prompt = []
        for document in converted:
            if document["prompt_id"] in existing:
                with_prompt.append(document)
            else:
                report.runs.invalid += 1
                reason = f"its prompt {document['prompt_id']} does not exist"
                report.note("runs", document["_id"], "invalid", reason)
        yield from _store_new(q.RUNS, with_prompt, report.runs, report, dry_run)
        done += len(rows)
        log.debug("import-sqlite: runs %d/%d", done, total)
        yield from reported(progress, "runs", done, total)


def _store_new(
    collection: str,
    documents: Sequence[dict[str, Any]],
    counts: ImportCounts,
    report: ImportReport,
    dry_run: bool,
    filled_in: Set[str] = frozenset(),
) -> Flow[list[dict[str, Any]]]:
    """Insert the documents whose ids are not stored yet; count the others as skipped.

    A stored document counts as the same if it matches on every field the source gave
    (``created_at`` supplied by an earlier import is not compared for ``filled_in`` ids).
    """
    if not documents:
        return []
    stored = yield from Find(
        collection, {"_id": {"$in": [document["_id"] for document in documents]}}
    )
    by_id = {document["_id"]: document for document in stored}
    fresh = []
    for document in documents:
        previous = by_id.get(document["_id"])
        if previous is None:
            fresh.append(document)
            continue
        counts.skipped += 1
        ignore = {"created_at"} if document["_id"] in filled_in else set()
        if not _same(previous, document, ignore):
            report.note(
                collection,
                document["_id"],
                "skipped",
                "a different document with this id is stored; it was left unchanged",
            )
    if fresh and not dry_run:
        yield from InsertMany(collection, fresh)
    counts.imported += len(fresh)
    return fresh


def _same(stored: dict[str, Any], converted: dict[str, Any], ignore: set[str]) -> bool:
    """Whether a stored document is what this import would write (times compared as UTC)."""
    return all(
        _comparable(stored.get(key)) == _comparable(value)
        for key, value in converted.items()
        if key not in ignore
    )


def _comparable(value: Any) -> Any:
    return parse_time(value) if isinstance(value, datetime) else value


def _row_id(row: sqlite3.Row) -> str | None:
    value = row["id"]
    return str(value)[:80] if value is not None else None
