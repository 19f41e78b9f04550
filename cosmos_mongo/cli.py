"""The ``cosmos-mongo`` command: a thin click layer over :class:`~cosmos_mongo.CosmosStore`.

Library errors become one-line messages and exit code 1 (usage errors exit 2); no traceback
reaches the user. Every command prints a table by default and JSON with ``--json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any, Literal, TypeGuard, TypeVar

import click
from bson import json_util
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.tree import Tree

from cosmos_mongo.config import Settings, mongodb_hosts, settings_problem
from cosmos_mongo.enhancers import without_credentials, word_count
from cosmos_mongo.errors import CosmosMongoError, InvalidInputError, PromptNotFoundError
from cosmos_mongo.files import create_private, private_directory
from cosmos_mongo.models import (
    Lineage,
    LineageEdge,
    Prompt,
    Run,
    SkippedDocument,
    VerificationReport,
)
from cosmos_mongo.store import CosmosStore
from cosmos_mongo.validation import MAX_LIMIT, MODEL_TYPES, RUN_STATUSES, ModelType, RunStatus
from cosmos_mongo.wire.server import DEFAULT_PORT, ServeOptions
from cosmos_mongo.wire.server import serve as serve_wire

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
if not console.is_terminal:  # piped: rich would assume 80 columns and cut cells to fit them
    console = Console(width=4096)


@dataclass
class _Context:
    uri: str | None
    database: str
    data_dir: Path | None
    ensure_indexes: bool | None = None
    _store: CosmosStore | None = None

    def settings(self) -> Settings:
        chosen: dict[str, Any] = {"database": self.database}
        if self.data_dir is not None:
            chosen["data_dir"] = self.data_dir
        if self.ensure_indexes is not None:
            chosen["ensure_indexes"] = self.ensure_indexes
        return Settings(**chosen)

    def store(self) -> CosmosStore:
        if self._store is None:
            self._store = CosmosStore.connect(self.uri, settings=self.settings())
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def where(self) -> str:
        return self.settings().location(self.uri)


class _Group(click.Group):
    """Turns every error into one line on stderr for the whole command tree: library errors
    as they are, anything unexpected with its type (``COSMOS_MONGO_DEBUG=1`` shows the
    traceback). Credentials in URLs are never echoed."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CosmosMongoError as exc:
            raise click.ClickException(_printable(str(exc))) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if _bad_settings(exc):
                # A usage error, as a bad option is: exit 2, the variable named, no value.
                click.echo(f"Error: {settings_problem(exc)}", err=True)
                raise SystemExit(2) from exc
            if os.environ.get("COSMOS_MONGO_DEBUG"):
                raise
            message = f"unexpected error ({type(exc).__name__}): {exc}"
            raise click.ClickException(_printable(message)) from exc


def _bad_settings(exc: Exception) -> TypeGuard[ValidationError | SettingsError]:
    """Whether reading the ``COSMOS_MONGO_*`` environment failed (not a model elsewhere)."""
    if isinstance(exc, ValidationError):
        return exc.title == Settings.__name__
    return isinstance(exc, SettingsError)


def _printable(message: str) -> str:
    """One line, credentials removed, encodable whatever the argument bytes were."""
    flat = " ".join(without_credentials(message).split())
    return flat.encode("utf-8", "replace").decode("utf-8")


def _json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        function
    )


def _limit_option(default: int) -> Callable[[F], F]:
    return click.option(
        "--limit",
        type=click.IntRange(1, MAX_LIMIT),
        default=default,
        show_default=True,
        help="Most items to show.",
    )


_OFFSET = click.option(
    "--offset",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Items to skip, for the next page.",
)


def _emit(value: BaseModel | Sequence[BaseModel] | None) -> None:
    if value is None:
        click.echo("null")
    elif isinstance(value, BaseModel):
        click.echo(value.model_dump_json(indent=2))
    else:
        click.echo(json.dumps([item.model_dump(mode="json") for item in value], indent=2))


_KEY_VALUE_HELP = (
    'VALUE is JSON if it parses as JSON (7, true, [1,2], {"a":1}); a VALUE starting with '
    '[, { or " must be valid JSON; any other is a string. Repeatable.'
)


def _key_values(pairs: Iterable[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON (7, true, [1,2]) is taken as such.

    A VALUE that starts as JSON (``[``, ``{``, ``"``) but does not parse is a usage error:
    storing ``[1, 2`` as a string would hide the typo."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        try:
            result[key] = json.loads(raw)
        except ValueError as exc:
            if raw.lstrip().startswith(("[", "{", '"')):
                raise click.BadParameter(
                    f"{key}'s value {raw!r} is not valid JSON ({exc}); quote a string that "
                    f"starts with [, {{ or \" as JSON: {key}='{json.dumps(raw)}'",
                    param_hint=option,
                ) from exc
            result[key] = raw
    return result


def _not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An empty or blank text is refused: a prompt named "" reads as unnamed everywhere."""
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty")
    return value


def _short(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _time(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class _Column:
    """A table column: its cell for a row, and how it gives way in a narrow terminal."""

    header: str
    cell: Callable[[Any], str]
    flexible: int = 0  # >0: wraps, as narrow as this; 0: kept whole on its lines (ids, times)
    drop: int = 0  # left out in a narrow terminal, highest first; 0: never (ids)


def _natural(column: _Column, rows: Sequence[Any]) -> int:
    """The width of the column's longest line, its header's included."""
    lines = [column.header, *(line for row in rows for line in column.cell(row).splitlines())]
    return max(len(line) for line in lines)


def _needed(columns: Sequence[_Column], rows: Sequence[Any]) -> int:
    """Width of the table with every whole column whole and every text at its narrowest:
    each column's cells, two of padding and a border, and the last border."""
    return 1 + sum((column.flexible or _natural(column, rows)) + 3 for column in columns)


def _fitting(
    layouts: Sequence[Sequence[_Column]], rows: Sequence[Any], width: int
) -> list[_Column]:
    """The first layout that fits ``width``; else the last, without the columns that go
    first until it fits. (Rich would squeeze every column to fit, ids to nothing.)"""
    for layout in layouts:
        if _needed(layout, rows) <= width:
            return list(layout)
    columns = list(layouts[-1])
    for rank in sorted({column.drop for column in columns if column.drop}, reverse=True):
        if _needed(columns, rows) <= width:
            break
        columns = [column for column in columns if column.drop != rank]
    return columns


def _print_table(title: str, layouts: Sequence[Sequence[_Column]], rows: Sequence[Any]) -> None:
    columns = _fitting(layouts, rows, console.width)
    # The texts share what the whole columns leave, each as wide as it needs if that fits.
    wants = {
        column.header: max(_natural(column, rows) - column.flexible, 0)
        for column in columns
        if column.flexible
    }
    spare = max(console.width - _needed(columns, rows), 0)
    share = min(1.0, spare / max(sum(wants.values()), 1))
    table = Table(title=title, title_justify="left")
    for column in columns:
        if column.flexible:
            width = column.flexible + int(wants[column.header] * share)
            table.add_column(column.header, width=width, overflow="fold")
        else:
            # Fold, not crop, in a terminal narrower than an id: every character stays.
            table.add_column(column.header, no_wrap=True, overflow="fold")
    for row in rows:
        table.add_row(*(column.cell(row) for column in columns))
    console.print(table)


def _prompt_table(prompts: Sequence[Prompt], title: str, all_enhanced: bool = False) -> None:
    flag = (
        [] if all_enhanced else [_Column("enhanced", lambda p: "yes" if p.enhanced else "", drop=3)]
    )
    columns = [
        _Column("id", lambda p: p.id),
        _Column("name", lambda p: p.name or "", flexible=10, drop=1),
        *flag,
        _Column("created (UTC)", lambda p: _time(p.created_at), drop=4),
        _Column("text", lambda p: _short(p.prompt_text), flexible=14, drop=2),
    ]
    _print_table(title, [columns], prompts)


def _run_table(runs: Sequence[Run], title: str) -> None:
    rest = [
        _Column("type", lambda r: r.model_type, drop=3),
        _Column("status", lambda r: r.status, drop=2),
        _Column("rating", lambda r: "" if r.rating is None else str(r.rating), drop=1),
        _Column("created (UTC)", lambda r: _time(r.created_at), drop=4),
    ]
    wide = [_Column("id", lambda r: r.id), _Column("prompt", lambda r: r.prompt_id), *rest]
    # Narrower: the prompt's id under the run's, both whole.
    narrow = [_Column("id\nprompt", lambda r: f"{r.id}\n{r.prompt_id}"), *rest]
    _print_table(title, [wide, narrow], runs)


def _warn_skipped(skipped: Sequence[SkippedDocument]) -> None:
    """One line on stderr naming the stored documents a read left out (stdout stays valid
    JSON with --json)."""
    if skipped:
        named = ", ".join(f"{each.id} ({each.field})" for each in skipped)
        click.echo(
            _printable(
                f"warning: left out {len(skipped)} stored document(s) that do not fit the data "
                f"model: {named}; `cosmos-mongo verify` lists each with the rule it breaks"
            ),
            err=True,
        )


def _show(found: BaseModel | None, what: str, as_json: bool) -> None:
    if found is None:
        raise click.ClickException(f"{what} not found")
    _emit(found) if as_json else _details(found)


def _details(model: BaseModel) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in model.model_dump(mode="json").items():
        shown = value if isinstance(value, str) else json.dumps(value)
        table.add_row(key, shown)
    console.print(table)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--uri",
    envvar="COSMOS_MONGO_URI",
    show_envvar=True,
    help="MongoDB connection string; unset means the embedded default.",
)
@click.option(
    "--db",
    "database",
    envvar="COSMOS_MONGO_DATABASE",
    default="cosmos",
    show_default=True,
    show_envvar=True,
    help="Database name.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="COSMOS_MONGO_DATA_DIR",
    show_envvar=True,
    help="Directory of the embedded default database.",
)
@click.option(
    "--no-ensure-indexes",
    "skip_indexes",
    is_flag=True,
    help="Do not create missing indexes (for users with only the read role; "
    "COSMOS_MONGO_ENSURE_INDEXES=0).",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log to stderr: -v retries and enhancer calls; -vv also batches and database operations.",
)
@click.version_option(package_name="cosmos-mongo")
@click.pass_context
def cli(
    ctx: click.Context,
    uri: str | None,
    database: str,
    data_dir: Path | None,
    skip_indexes: bool,
    verbose: int,
) -> None:
    """Store and inspect NVIDIA Cosmos prompts and runs in MongoDB."""
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        library_log = logging.getLogger("cosmos_mongo")
        library_log.addHandler(handler)
        library_log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
        ctx.call_on_close(lambda: library_log.removeHandler(handler))
    state = _Context(
        uri=uri or None,
        database=database,
        data_dir=data_dir,
        ensure_indexes=False if skip_indexes else None,
    )
    ctx.obj = state
    ctx.call_on_close(state.close)


@cli.command()
@click.option(
    "--reconcile",
    is_flag=True,
    help="Compare the indexes with this version's and list what would change.",
)
@click.option("--apply", is_flag=True, help="With --reconcile: make the changes.")
@click.option(
    "--text-search",
    is_flag=True,
    help="Also create the text index for `prompt search --words` (MongoDB servers).",
)
@_json_option
@click.pass_obj
def init(state: _Context, reconcile: bool, apply: bool, text_search: bool, as_json: bool) -> None:
    """Create the database and its missing indexes (safe to run again)."""
    if apply and not reconcile:
        raise click.UsageError("--apply goes with --reconcile")
    if not reconcile:
        names = state.store().ensure_indexes()
        if text_search:
            names.append(state.store().create_text_index())
        if as_json:
            click.echo(json.dumps({"where": state.where(), "indexes": names}, indent=2))
        else:
            click.echo(f"Ready: {state.where()} with {len(names)} indexes.")
        return
    state.ensure_indexes = False  # a conflict must not stop the command that fixes it
    report = state.store().reconcile_indexes(apply=apply)
    if as_json:
        _emit(report)
        return
    verb = "" if apply else "would be "
    for title, names in [
        ("in order", report.present),
        ("served by another index", report.reused),
        (f"{verb}created", report.created),
        (f"{verb}dropped and recreated", report.recreated),
        (f"{verb}dropped (retired)", report.dropped),
        ("conflicts (not ours: left alone)", report.conflicts),
    ]:
        if names:
            console.print(f"{title}: {escape(', '.join(names))}")
    if report.in_order:
        click.echo("Indexes are in order.")
    elif not apply:
        click.echo("Dry run: nothing changed. Run again with --apply to make these changes.")


@cli.group()
def prompt() -> None:
    """Create, show, update, list, search and delete prompts."""


@prompt.command("create")
@click.argument("text")
@click.option("--name", callback=_not_empty, help="A short name for the prompt.")
@click.option("--video", help="Path or URL of the input video.")
@click.option("--negative-prompt", help="What the generation should avoid.")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"Another input. {_KEY_VALUE_HELP}",
)
@click.option(
    "--param", "params", multiple=True, metavar="KEY=VALUE", help=f"A parameter. {_KEY_VALUE_HELP}"
)
@_json_option
@click.pass_obj
def prompt_create(
    state: _Context,
    text: str,
    name: str | None,
    video: str | None,
    negative_prompt: str | None,
    inputs: tuple[str, ...],
    params: tuple[str, ...],
    as_json: bool,
) -> None:
    """Store a new prompt with TEXT."""
    input_map = _key_values(inputs, "--input")
    if video is not None:
        input_map["video"] = video
    parameters = _key_values(params, "--param")
    if name is not None:
        parameters["name"] = name
    if negative_prompt is not None:
        parameters["negative_prompt"] = negative_prompt
    created = state.store().create_prompt(text, input_map, parameters)
    if as_json:
        _emit(created)
    else:
        click.echo(f"Created {created.id}")


@prompt.command("show")
@click.argument("prompt_id")
@_json_option
@click.pass_obj
def prompt_show(state: _Context, prompt_id: str, as_json: bool) -> None:
    """Show one prompt."""
    _show(state.store().get_prompt(prompt_id), f"prompt {prompt_id!r}", as_json)


@prompt.command("update")
@click.argument("prompt_id")
@click.option("--text", "prompt_text", callback=_not_empty, help="The new text.")
@click.option("--name", callback=_not_empty, help="A new short name.")
@click.option("--negative-prompt", help="What the generation should avoid.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"A parameter to set (the others stay). {_KEY_VALUE_HELP}",
)
@_json_option
@click.pass_obj
def prompt_update(
    state: _Context,
    prompt_id: str,
    prompt_text: str | None,
    name: str | None,
    negative_prompt: str | None,
    params: tuple[str, ...],
    as_json: bool,
) -> None:
    """Replace a prompt's text and/or set some of its parameters."""
    parameters = _key_values(params, "--param")
    if name is not None:
        parameters["name"] = name
    if negative_prompt is not None:
        parameters["negative_prompt"] = negative_prompt
    if prompt_text is None and not parameters:
        raise click.UsageError("give what to change: --text, --name, --negative-prompt or --param")
    updated = state.store().update_prompt(
        prompt_id, prompt_text=prompt_text, parameters=parameters or None
    )
    if as_json:
        _emit(updated)
    else:
        click.echo(f"Updated {updated.id}")


@prompt.command("list")
@_limit_option(50)
@_OFFSET
@click.option(
    "--enhanced/--not-enhanced",
    default=None,
    help="Only enhanced prompts, or only the others (default: all).",
)
@_json_option
@click.pass_obj
def prompt_list(
    state: _Context, limit: int, offset: int, enhanced: bool | None, as_json: bool
) -> None:
    """List prompts, newest first."""
    prompts = state.store().list_prompts(limit=limit, offset=offset, enhanced=enhanced)
    _emit(prompts) if as_json else _prompt_table(prompts, f"{len(prompts)} prompt(s)")
    _warn_skipped(prompts.skipped)


@prompt.command("search")
@click.argument("query")
@_limit_option(50)
@_OFFSET
@click.option(
    "--words",
    is_flag=True,
    help="Match whole words through the text index (a MongoDB server; init --text-search).",
)
@_json_option
@click.pass_obj
def prompt_search(
    state: _Context, query: str, limit: int, offset: int, words: bool, as_json: bool
) -> None:
    """Find prompts whose text or name contains QUERY (any case)."""
    prompts = state.store().search_prompts(
        query, limit=limit, offset=offset, match="words" if words else "substring"
    )
    _emit(prompts) if as_json else _prompt_table(prompts, f"{len(prompts)} match(es)")
    _warn_skipped(prompts.skipped)


@prompt.command("delete")
@click.argument("prompt_id")
@click.option("--yes", is_flag=True, help="Delete without asking.")
@click.option(
    "--force", is_flag=True, help="Delete even while an enhancement of it runs (it then fails)."
)
@_json_option
@click.pass_obj
def prompt_delete(state: _Context, prompt_id: str, yes: bool, force: bool, as_json: bool) -> None:
    """Delete a prompt and its runs (shows what goes, and what stays, first).

    Enhance runs that produced other prompts stay, as those prompts' record.
    """
    store = state.store()
    if not yes:
        # Only to ask: with --yes a prompt too broken to preview (edited by hand) still goes.
        preview = store.preview_prompt_deletion(prompt_id)
        active = f", {len(preview.active_run_ids)} still active" if preview.active_run_ids else ""
        click.echo(f"{prompt_id}: {_short(preview.prompt.prompt_text)}", err=True)
        click.echo(f"This deletes the prompt and {preview.run_count} run(s){active}.", err=True)
        if preview.derived_prompt_ids:
            click.echo(
                f"Prompts enhanced from it stay: {', '.join(preview.derived_prompt_ids)}; "
                f"their enhance runs stay too: {', '.join(preview.kept_run_ids)}.",
                err=True,
            )
        if preview.running_enhancement_ids:
            click.echo(
                f"It is being enhanced now: {', '.join(preview.running_enhancement_ids)}.",
                err=True,
            )
        click.confirm("Delete?", abort=True, err=True)
    result = store.delete_prompt(prompt_id, force=force)
    if as_json:
        _emit(result)
    else:
        kept = f"; kept {len(result.kept_run_ids)} run(s) of prompts enhanced from it"
        click.echo(
            f"Deleted {result.prompt_id} and {result.deleted_runs} run(s)"
            f"{kept if result.kept_run_ids else ''}."
        )


@cli.group()
def run() -> None:
    """Create, update, list and show runs."""


@run.command("create")
@click.argument("prompt_id")
@click.option(
    "--model-type",
    type=click.Choice(sorted(MODEL_TYPES)),
    default="transfer",
    show_default=True,
    help="The Cosmos model the run uses.",
)
@click.option(
    "--status",
    type=click.Choice(sorted(RUN_STATUSES)),
    default="pending",
    show_default=True,
    help="The run's first status.",
)
@click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"An execution setting (seed, steps, ...). {_KEY_VALUE_HELP}",
)
@click.option(
    "--metadata", "metadata", multiple=True, metavar="KEY=VALUE", help=f"A note. {_KEY_VALUE_HELP}"
)
@_json_option
@click.pass_obj
def run_create(
    state: _Context,
    prompt_id: str,
    model_type: ModelType,
    status: RunStatus,
    configs: tuple[str, ...],
    metadata: tuple[str, ...],
    as_json: bool,
) -> None:
    """Record a run of the prompt PROMPT_ID."""
    created = state.store().create_run(
        prompt_id,
        _key_values(configs, "--config"),
        model_type=model_type,
        metadata=_key_values(metadata, "--metadata"),
        initial_status=status,
    )
    if as_json:
        _emit(created)
    else:
        click.echo(f"Created {created.id}")


@run.command("update")
@click.argument("run_id")
@click.option("--status", type=click.Choice(sorted(RUN_STATUSES)), help="The new status.")
@click.option("--rating", type=click.IntRange(1, 5), help="A rating from 1 to 5.")
@click.option(
    "--output",
    "outputs",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"An output to set (the others stay). {_KEY_VALUE_HELP}",
)
@click.option(
    "--metadata",
    "metadata",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"A note to set (the others stay). {_KEY_VALUE_HELP}",
)
@click.option("--error-message", help="Why the run failed.")
@click.option("--log-path", help="Where the run's log is.")
@_json_option
@click.pass_obj
def run_update(
    state: _Context,
    run_id: str,
    status: RunStatus | None,
    rating: int | None,
    outputs: tuple[str, ...],
    metadata: tuple[str, ...],
    error_message: str | None,
    log_path: str | None,
    as_json: bool,
) -> None:
    """Set a run's status, rating, outputs, metadata, error message or log path."""
    fields: dict[str, Any] = {
        name: value
        for name, value in (
            ("status", status),
            ("rating", rating),
            ("error_message", error_message),
            ("log_path", log_path),
        )
        if value is not None
    }
    store = state.store()
    added = {"outputs": _key_values(outputs, "--output")}
    added["metadata"] = _key_values(metadata, "--metadata")
    if any(added.values()):
        # Merged into what the run has: one --output must not drop the others.
        current = store.get_run(run_id)
        if current is None:
            raise click.ClickException(f"run {run_id!r} not found")
        for name, values in added.items():
            if values:
                fields[name] = {**getattr(current, name), **values}
    if not fields:
        raise click.UsageError(
            "give what to change: --status, --rating, --output, --metadata, --error-message "
            "or --log-path"
        )
    updated = store.update_run(run_id, **fields)
    if as_json:
        _emit(updated)
    else:
        rating_shown = "" if updated.rating is None else f", rating {updated.rating}"
        click.echo(f"Updated {updated.id}: {updated.status}{rating_shown}")


@run.command("list")
@click.option("--prompt-id", help="Only runs of this prompt.")
@click.option(
    "--model-type", type=click.Choice(sorted(MODEL_TYPES)), help="Only runs of this type."
)
@click.option("--status", type=click.Choice(sorted(RUN_STATUSES)), help="Only runs in this status.")
@_limit_option(50)
@_OFFSET
@_json_option
@click.pass_obj
def run_list(
    state: _Context,
    prompt_id: str | None,
    model_type: ModelType | None,
    status: RunStatus | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    runs = state.store().list_runs(prompt_id, model_type, status, limit=limit, offset=offset)
    _emit(runs) if as_json else _run_table(runs, f"{len(runs)} run(s)")
    _warn_skipped(runs.skipped)


@run.command("show")
@click.argument("run_id")
@_json_option
@click.pass_obj
def run_show(state: _Context, run_id: str, as_json: bool) -> None:
    """Show one run."""
    _show(state.store().get_run(run_id), f"run {run_id!r}", as_json)


# -- enhancement ----------------------------------------------------------------------------


def _check_minutes(ctx: click.Context, param: click.Parameter, minutes: float) -> float:
    """Minutes from 0 to 100 years; nan and infinity are usage errors, not tracebacks."""
    if not 0 <= minutes <= 36500 * 24 * 60:  # also false for nan
        raise click.BadParameter(f"{minutes!r} must be a number from 0 to 52560000 (100 years)")
    return minutes


_STALE = click.option(
    "--stale-minutes",
    type=float,
    callback=_check_minutes,
    default=10.0,
    show_default=True,
    help="Treat enhancements running longer than this as interrupted.",
)


@cli.command()
@click.argument("prompt_id")
@click.option(
    "--overwrite", is_flag=True, help="Rewrite the prompt in place (default: new prompt)."
)
@click.option("--force", is_flag=True, help="Overwrite even if the prompt has other runs.")
@click.option("--text", "enhanced_text", help="Use this text instead of running the enhancer.")
@click.option("--model", "enhancement_model", help="Model to ask, or author of --text.")
@_json_option
@click.pass_obj
def enhance(
    state: _Context,
    prompt_id: str,
    overwrite: bool,
    force: bool,
    enhanced_text: str | None,
    enhancement_model: str | None,
    as_json: bool,
) -> None:
    """Rewrite a prompt into a detailed Cosmos prompt (offline template unless configured)."""
    if force and not overwrite:
        raise click.UsageError("--force goes with --overwrite (it lets an overwrite proceed)")
    result = state.store().enhance_prompt(
        prompt_id,
        create_new=not overwrite,
        enhancement_model=enhancement_model,
        force_overwrite=force,
        enhanced_text=enhanced_text,
    )
    if as_json:
        _emit(result)
        return
    how = "as new prompt" if result.created_new else "in place"
    click.echo(f"Enhanced {result.original_prompt_id} {how} {result.enhanced_prompt_id}")
    click.echo(f"run {result.run_id}, model {result.enhancement_model}, {result.duration_seconds}s")
    click.echo(result.enhanced_text)


@cli.command()
@click.argument("prompt_id")
@_json_option
@click.pass_obj
def details(state: _Context, prompt_id: str, as_json: bool) -> None:
    """How a prompt got its enhanced text (exit 1 if it is missing or was never enhanced)."""
    store = state.store()
    found = store.get_enhancement_details(prompt_id)
    if found is None:
        if store.get_prompt(prompt_id) is None:
            raise PromptNotFoundError(prompt_id)
        raise click.ClickException(
            f"prompt {prompt_id!r} was never enhanced: it has no enhanced text to explain"
        )
    _show(found, f"enhancement of {prompt_id!r}", as_json)


@cli.command()
@click.argument("prompt_id")
@_json_option
@click.pass_obj
def original(state: _Context, prompt_id: str, as_json: bool) -> None:
    """The prompt this one was enhanced from (exit 1 if none)."""
    _show(state.store().get_original_prompt(prompt_id), f"original of {prompt_id!r}", as_json)


@cli.command()
@_limit_option(100)
@_OFFSET
@_json_option
@click.pass_obj
def enhanced(state: _Context, limit: int, offset: int, as_json: bool) -> None:
    """List enhanced prompts, newest first."""
    prompts = state.store().list_enhanced_prompts(limit, offset)
    if as_json:
        _emit(prompts)
    else:
        _prompt_table(prompts, f"{len(prompts)} enhanced prompt(s)", all_enhanced=True)
    _warn_skipped(prompts.skipped)


@cli.command()
@click.argument("prompt_id")
@_limit_option(100)
@_OFFSET
@_json_option
@click.pass_obj
def history(state: _Context, prompt_id: str, limit: int, offset: int, as_json: bool) -> None:
    """Every enhancement involving a prompt, newest first."""
    runs = state.store().get_enhancement_history(prompt_id, limit, offset)
    _warn_skipped(runs.skipped)
    if as_json:
        _emit(runs)
        return

    def model(run_: Run) -> str:
        return str(
            run_.outputs.get("enhancement_model") or run_.execution_config.get("model") or ""
        )

    def source(run_: Run) -> str:
        return str(run_.outputs.get("original_prompt_id") or run_.prompt_id)

    def result(run_: Run) -> str:
        return str(run_.outputs.get("enhanced_prompt_id") or "")

    status = _Column("status", lambda r: r.status, drop=2)
    by = _Column("model", model, flexible=11, drop=1)
    created = _Column("created (UTC)", lambda r: _time(r.created_at), drop=3)
    wide = [
        _Column("run", lambda r: r.id),
        status,
        by,
        _Column("from", source),
        _Column("to", result),
        created,
    ]
    # Narrower: the prompts' ids under the run's, each whole.
    narrow = [
        _Column("run\nfrom\nto", lambda r: f"{r.id}\n{source(r)}\n{result(r)}"),
        status,
        by,
        created,
    ]
    _print_table(f"{len(runs)} enhancement(s)", [wide, narrow], runs)


def _label(lineage: Lineage, prompt_id: str) -> str:
    found = lineage.prompts.get(prompt_id)
    if found is None:
        return f"[red]{prompt_id} (missing)[/red]"
    name = f" [bold]{escape(found.name)}[/bold]" if found.name else ""
    marker = " [yellow]<- this prompt[/yellow]" if prompt_id == lineage.prompt_id else ""
    return f"{prompt_id}{name}: {escape(_short(found.prompt_text, 60))}{marker}"


def _edge_label(edge: LineageEdge) -> str:
    if edge.run is None:
        return "legacy parent_prompt_id"
    model = edge.run.outputs.get("enhancement_model") or edge.run.execution_config.get("model")
    return f"{edge.run.id} by {model}"


def _lineage_tree(lineage: Lineage) -> Tree:
    chain = [edge.parent_id for edge in reversed(lineage.ancestors)] + [lineage.prompt_id]
    tree = Tree(_label(lineage, chain[0]))
    nodes = {chain[0]: tree}
    for edge in reversed(lineage.ancestors):
        nodes[edge.child_id] = nodes[edge.parent_id].add(
            f"{_label(lineage, edge.child_id)}  [dim]({_edge_label(edge)})[/dim]"
        )
    for edge in lineage.descendants:
        nodes[edge.child_id] = nodes[edge.parent_id].add(
            f"{_label(lineage, edge.child_id)}  [dim]({_edge_label(edge)})[/dim]"
        )
    for run_ in lineage.in_place:
        if run_.prompt_id in nodes:
            model = run_.outputs.get("enhancement_model")
            nodes[run_.prompt_id].add(
                f"[cyan]rewritten in place by {model}[/cyan] [dim]({run_.id})[/dim]"
            )
    return tree


@cli.command()
@click.argument("prompt_id")
@click.option(
    "--format",
    "output",
    type=click.Choice(["tree", "json", "mermaid"]),
    default="tree",
    show_default=True,
    help="A tree for the terminal, JSON, or a Mermaid flowchart to paste into Markdown.",
)
@_json_option
@click.pass_obj
def lineage(state: _Context, prompt_id: str, output: str, as_json: bool) -> None:
    """Draw where a prompt came from and what came of it."""
    if as_json and output != "json":
        source = click.get_current_context().get_parameter_source("output")
        if source is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError(f"--json prints JSON; it does not go with --format {output}")
    found = state.store().get_lineage(prompt_id)
    _warn_skipped(found.skipped)
    if as_json or output == "json":
        _emit(found)
    elif output == "mermaid":
        click.echo(found.to_mermaid(), nl=False)
    else:
        console.print(_lineage_tree(found))


def _print_verification(report: VerificationReport) -> None:
    # (title, problems, advice, whether the quick checks look at it)
    every_check = [
        (
            "prompts carry only `enhanced`",
            report.prompts_with_legacy_keys,
            "run `migrate --apply`",
            False,
        ),
        (
            "enhance runs have complete outputs",
            report.incomplete_enhance_runs,
            "run `repair`",
            False,
        ),
        ("enhance runs' results exist", report.dangling_edges, "run `repair`", False),
        ("every run's prompt exists", report.orphan_runs, "run `repair`", True),
        ("the enhanced flag agrees with the runs", report.flag_mismatches, "run `repair`", False),
        ("no half-finished work", report.half_finished, "run `repair`", True),
        (
            "the stored bytes are intact",
            report.damaged_documents,
            "`backup` first; `rebuild-indexes` for indexes, a backup for documents",
            True,
        ),
        (
            "stored documents fit the data model",
            report.invalid_documents,
            "fix or delete them, e.g. in mongosh",
            False,
        ),
    ]
    checks = [
        (title, problems, advice)
        for title, problems, advice, quick in every_check
        if quick or problems or not report.quick
    ]
    for title, problems, advice in checks:
        if problems:
            console.print(f"[red]FAIL[/red] {title}: {len(problems)} ({advice})")
            for problem in problems[:10]:
                console.print(f"     {escape(problem)}")
        else:
            console.print(f"[green]ok[/green]   {title}")
    if report.quick:
        console.print("quick: only interrupted work was checked (run without --quick for all)")


_QUICK = click.option(
    "--quick",
    is_flag=True,
    help="Only interrupted enhancements, reverts and deletions, through small indexes "
    "(for a schedule); the full checks read every run.",
)


@cli.command()
@_STALE
@_QUICK
@_json_option
@click.pass_obj
def verify(state: _Context, stale_minutes: float, quick: bool, as_json: bool) -> None:
    """Check the enhancement data and the stored bytes; exit 1 if a check fails."""
    state.ensure_indexes = False  # verify must report damage that creating indexes meets
    report = state.store().verify(stale_after=timedelta(minutes=stale_minutes), quick=quick)
    if as_json:
        _emit(report)
    else:
        _print_verification(report)
    if not report.ok:
        raise SystemExit(1)


@cli.command()
@_STALE
@_QUICK
@_json_option
@click.pass_obj
def repair(state: _Context, stale_minutes: float, quick: bool, as_json: bool) -> None:
    """Settle interrupted work, remove runs without a prompt, fix flags, migrate legacy data."""
    with _progress("repair") as advance:
        report = state.store().repair(
            stale_after=timedelta(minutes=stale_minutes), progress=advance, quick=quick
        )
    if as_json:
        _emit(report)
        return
    click.echo(
        f"completed {len(report.completed)}, rolled back {len(report.rolled_back)}, "
        f"reverts finished {len(report.reverts_finished)}, deletions finished "
        f"{len(report.deletions_finished)}, runs removed {len(report.runs_removed)}, "
        f"flags fixed {len(report.flags_fixed)}, legacy prompts migrated "
        f"{len(report.migration.prompts_stripped)}"
    )
    for prompt_id in report.deletions_cancelled:
        click.echo(f"deletion of {prompt_id} stopped before the prompt went; it stays")
    if quick:
        click.echo("quick: orphans, flags and legacy data were not checked (run without --quick)")
    for problem in report.unrepairable:
        click.echo(f"cannot repair: {problem}")
    for left in report.migration.prompts_left:
        click.echo(f"cannot migrate: {left}")


@cli.command()
@click.option("--apply", "apply_changes", is_flag=True, help="Make the changes (default: dry run).")
@_json_option
@click.pass_obj
def migrate(state: _Context, apply_changes: bool, as_json: bool) -> None:
    """Move legacy enhancement keys from prompts into runs (dry run unless --apply)."""
    with _progress("migrate") as advance:
        report = state.store().migrate(dry_run=not apply_changes, progress=advance)
    if as_json:
        _emit(report)
        return
    verb = "Would" if report.dry_run else "Did"
    click.echo(
        f"{verb} backfill {len(report.runs_backfilled)} run(s), create {len(report.runs_created)} "
        f"run(s) and strip legacy keys from {len(report.prompts_stripped)} prompt(s) "
        f"({report.prompts_examined} examined)."
    )
    for left in report.prompts_left:
        click.echo(f"cannot migrate: {left}")
    if report.dry_run and report.changes:
        click.echo("Run again with --apply to make these changes.")


@cli.command()
@click.argument("run_id")
@_json_option
@click.pass_obj
def revert(state: _Context, run_id: str, as_json: bool) -> None:
    """Undo an in-place enhancement: restore the text it replaced."""
    restored = state.store().revert_enhancement(run_id)
    if as_json:
        _emit(restored)
    else:
        click.echo(f"Restored {restored.id}: {_short(restored.prompt_text)}")


@cli.command()
@click.argument("destination", type=click.Path(dir_okay=True, path_type=Path))
@_json_option
@click.pass_obj
def backup(state: _Context, destination: Path, as_json: bool) -> None:
    """Copy the embedded database to DESTINATION (a new file, or a directory), consistently,
    even while other processes use it. On a MongoDB server, use mongodump instead."""
    state.ensure_indexes = False  # a damaged store is copied as it is, before any fix
    database = state.store().db
    if not hasattr(type(database), "backup"):
        raise InvalidInputError(
            "backup", "works on the embedded default; for a MongoDB server use mongodump"
        )
    copy = database.backup(destination)
    if as_json:
        click.echo(json.dumps({"backup": str(copy)}))
    else:
        click.echo(f"Backed up {state.where()} to {copy}")


@cli.command()
@_json_option
@click.pass_obj
def compact(state: _Context, as_json: bool) -> None:
    """Give the space of deleted documents back to the disk (embedded default), safely while
    other processes use the store. On a MongoDB server the server reclaims space itself."""
    database = state.store().db
    if not hasattr(type(database), "compact"):
        raise InvalidInputError(
            "compact", "works on the embedded default; a MongoDB server manages its own space"
        )
    before, after = database.compact()
    if as_json:
        click.echo(json.dumps({"bytes_before": before, "bytes_after": after}))
    else:
        click.echo(f"Compacted {state.where()}: {before:,} bytes -> {after:,} bytes")


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Loopback address to listen on (127.0.0.1 or ::1); any other is refused.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="TCP port; 0 takes a free one.",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Listen on this Unix socket (mode 0600) instead of TCP.",
)
@click.option(
    "--writable",
    is_flag=True,
    help="Allow writes (insert, update, delete, findAndModify, createIndexes).",
)
@click.option(
    "--cursor-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds an idle cursor stays open.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Connections served at once; more are closed.",
)
@_json_option
@click.pass_obj
def serve(
    state: _Context,
    host: str,
    port: int,
    socket_path: Path | None,
    writable: bool,
    cursor_timeout: float,
    max_connections: int,
    as_json: bool,
) -> None:
    """Serve the embedded databases over the MongoDB wire protocol, for mongosh, Compass or
    any driver, until Ctrl-C. Read-only unless --writable; this machine only."""
    if state.uri:
        raise click.UsageError(
            "serve serves the embedded default; --uri (COSMOS_MONGO_URI) is a MongoDB server "
            "already: connect mongosh to it directly"
        )
    settings = state.settings()
    if writable and settings.read_only:
        raise click.UsageError("--writable and COSMOS_MONGO_READ_ONLY contradict each other")
    database = state.database
    context = click.get_current_context()
    source = context.parent.get_parameter_source("database") if context.parent else None
    if (
        source in (None, click.core.ParameterSource.DEFAULT)
        and not (settings.data_dir / f"{database}.sqlite3").exists()
        and (settings.data_dir / "cosmos_demo.sqlite3").exists()
    ):
        database = "cosmos_demo"  # after `cosmos-mongo demo`, point at what it wrote
    options = ServeOptions(
        data_dir=settings.data_dir,
        database=database,
        host=host,
        port=port,
        socket_path=socket_path,
        writable=writable,
        max_connections=max_connections,
        cursor_timeout=cursor_timeout,
    )

    def announce(uri: str) -> None:
        if as_json:  # one line, once listening: a script reads the URI from it
            shown = {"uri": uri, "data_dir": str(settings.data_dir), "writable": writable}
            click.echo(json.dumps(shown))
            return
        mode = "read-write" if writable else "read-only (--writable allows writes)"
        if database != state.database:
            mode += f"; {state.database} has no data yet, so this names the demo's database"
        click.echo(f"Serving {settings.data_dir}, {mode}. Connect with:\n{uri}")
        click.echo(f'  mongosh "{uri}"\nCtrl-C stops.')

    try:
        serve_wire(options, announce)
    except OSError as exc:  # the address is taken, or the socket's directory is missing
        where = socket_path or f"{host}:{port}"
        raise click.ClickException(
            f"cannot listen on {where}: {exc.strerror or exc} (is another server there? "
            "--port 0 takes a free port)"
        ) from exc


@cli.command("rebuild-indexes")
@_json_option
@click.pass_obj
def rebuild_indexes(state: _Context, as_json: bool) -> None:
    """Re-derive every index entry of the embedded database from its documents, fixing what
    differs (safe to run again: a second run changes nothing). Damaged documents are not
    rebuilt: they come back only from a backup. On a MongoDB server the server keeps its
    indexes."""
    state.ensure_indexes = False  # the damage it fixes would stop index creation first
    database = state.store().db
    if not hasattr(type(database), "rebuild_indexes"):
        raise InvalidInputError(
            "rebuild-indexes", "works on the embedded default; a MongoDB server keeps its indexes"
        )
    report = database.rebuild_indexes()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    for index in report.indexes:
        changed = f"{index.removed} entries removed, {index.added} added" + (
            ", sort use corrected" if index.order_changed else ""
        )
        click.echo(f"{index.name}: {index.entries} entries ({changed})")
    for fixed in report.catalog_fixed:
        click.echo(f"fixed: {fixed}")
    if report.stray_entries_removed:
        click.echo(f"removed {report.stray_entries_removed} entries of indexes that do not exist")
    click.echo(
        f"Rebuilt the indexes of {state.where()}: {report.changes} changes"
        + (" (all was in order)" if not report.changes else "")
    )
    for left in report.not_rebuilt:
        click.echo(f"not rebuilt (restore from a backup): {left}")
    if report.not_rebuilt:
        raise SystemExit(1)


@cli.command("import-sqlite")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Report what would be imported; write nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Rows read and written per round trip.",
)
@_json_option
@click.pass_obj
def import_sqlite(
    state: _Context, path: Path, dry_run: bool, batch_size: int, as_json: bool
) -> None:
    """Import the predecessor's SQLite database (outputs/cosmos.db); safe to run again."""
    with _progress("import-sqlite") as advance:
        report = state.store().import_sqlite(
            path, batch_size=batch_size, dry_run=dry_run, progress=advance
        )
    if as_json:
        _emit(report)
        return
    table = Table(
        title=f"{'Dry run of ' if dry_run else ''}import from {path}", title_justify="left"
    )
    for column in ("table", "imported", "skipped", "invalid"):
        table.add_column(column)
    for name, counts in (("prompts", report.prompts), ("runs", report.runs)):
        table.add_row(name, str(counts.imported), str(counts.skipped), str(counts.invalid))
    table.add_row("job_queue", "0", str(report.job_queue_skipped), "0")
    console.print(table)
    for problem in report.problems[:20]:
        console.print(
            f"{problem.outcome:8} {problem.table} {problem.row_id}: {escape(problem.reason)}"
        )
    hidden = len(report.problems) - 20 + report.problems_not_listed
    if hidden > 0:
        console.print(f"... and {hidden} more (use --json for all)")


# In this order: a run's prompt goes first.
COLLECTIONS: tuple[Literal["prompts", "runs"], ...] = ("prompts", "runs")


def _batches(documents: Iterable[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@contextlib.contextmanager
def _progress(command: str) -> Iterator[Callable[[str, int, int | None], None]]:
    """Progress of a long command on stderr: a rich bar on a terminal; otherwise (piped, in
    CI) a few plain lines, however many batches: each stage's first report, the one that
    passes half its total, and its last (the final count of a stage without a total is
    printed when the command ends)."""
    terminal = Console(stderr=True)
    if not terminal.is_terminal:
        printed: dict[str, int] = {}  # per stage: 1 started, 2 half, 3 done
        pending: dict[str, str] = {}  # per stage: the count not printed yet

        def line(stage: str, done: int, total: int | None) -> None:
            counted = f"{done:,}" if total is None else f"{done:,}/{total:,}"
            if total is None or done >= total:
                reached = 3 if total is not None else 1
            else:
                reached = 2 if 2 * done >= total else 1
            if reached > printed.get(stage, 0):
                printed[stage] = reached
                pending.pop(stage, None)
                click.echo(f"{command}: {stage} {counted}", err=True)
            else:
                pending[stage] = counted

        try:
            yield line
        finally:
            for stage, counted in pending.items():
                click.echo(f"{command}: {stage} {counted}", err=True)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=terminal,
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def advance(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield advance


def _stored(store: CosmosStore, collection: str) -> int:
    """How many documents ``collection`` holds, for a progress bar's total: from the
    collection's metadata on a server, one count on the embedded default."""
    return int(store.db[collection].estimated_document_count())


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@_json_option
@click.pass_obj
def export(state: _Context, directory: Path, as_json: bool) -> None:
    """Write every prompt and run to DIRECTORY as MongoDB Extended JSON, one file per
    collection and one document per line (mongoimport reads them as they are). The files are
    0600 and any directory it creates 0700: they hold every prompt and run."""
    targets = {name: directory / f"{name}.json" for name in COLLECTIONS}
    store = state.store()
    counts = {}
    try:
        taken = [str(path) for path in targets.values() if path.exists()]
        if taken:
            raise InvalidInputError(
                "directory", f"already holds {', '.join(taken)}; nothing written"
            )
        private_directory(directory)
        with _progress("export") as say:
            for name, path in targets.items():
                written, total = 0, _stored(store, name)
                with create_private(path) as file:
                    for batch in _batches(store.iter_documents(name), 500):
                        for document in batch:
                            line = json_util.dumps(document, json_options=_EXTENDED_JSON)
                            file.write(line + "\n")
                        written += len(batch)
                        say(name, written, total)
                counts[name] = written
    except OSError as exc:  # a name too long, a full disk, no permission...
        done = f"; {', '.join(counts)} written before it stopped" if counts else ""
        raise click.ClickException(
            f"cannot write the export to {_shortened_path(directory)}: {exc.strerror or exc}{done}"
        ) from exc
    if as_json:
        click.echo(json.dumps({"directory": str(directory), **counts}, indent=2))
    else:
        click.echo(
            f"Exported {counts['prompts']:,} prompt(s) and {counts['runs']:,} run(s) from "
            f"{state.where()} to {directory}"
        )


def _shortened_path(path: Path, limit: int = 120) -> str:
    """``path`` for one line of an error: its middle elided when it is longer than ``limit``."""
    shown = str(path)
    if len(shown) <= limit:
        return shown
    half = (limit - 1) // 2
    return f"{shown[:half]}\u2026{shown[-half:]}"


_EXTENDED_JSON = json_util.JSONOptions(
    json_mode=json_util.JSONMode.RELAXED, tz_aware=True, tzinfo=UTC
)


def _same_store(
    first: Settings, first_uri: str | None, second: Settings, second_uri: str | None
) -> bool:
    """Whether two settings (and URIs, which win over theirs) name one database."""

    def identity(settings: Settings, uri: str | None) -> tuple[str, str]:
        if uri is None and settings.uri is not None:
            uri = settings.uri.get_secret_value()
        if uri is None:
            return str(settings.data_dir.expanduser().resolve()), settings.database
        return f"mongodb://{mongodb_hosts(uri)}", settings.database

    return identity(first, first_uri) == identity(second, second_uri)


@cli.command()
@click.option("--to", "to_uri", help="The target: the MongoDB server at this connection string.")
@click.option(
    "--to-data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The target: the embedded database in this directory (also when COSMOS_MONGO_URI "
    "is set: that server is then the source).",
)
@click.option(
    "--to-db",
    help="The target database name (default: the source's); alone, another database of the "
    "source's server or directory.",
)
@_json_option
@click.pass_obj
def copy(
    state: _Context, to_uri: str | None, to_data_dir: Path | None, to_db: str | None, as_json: bool
) -> None:
    """Copy every prompt and run from the store the command points at (--uri, else
    COSMOS_MONGO_URI, else the embedded default) to another store, ids kept. Safe to run
    again: documents already there are left alone. Every document is checked against the
    data model as it is written; the copy ends by counting the target, and with verify on
    it: the quick checks when it started empty (it then holds exactly what was checked), the
    full ones when it already held documents."""
    if to_uri is not None and to_data_dir is not None:
        raise click.UsageError(
            "--to URI (a server) and --to-data-dir DIR (an embedded database) name two "
            "targets; give one"
        )
    if to_uri is None and to_data_dir is None and to_db is None:
        raise click.UsageError("give the target: --to URI, --to-data-dir DIR and/or --to-db NAME")
    chosen: dict[str, Any] = {"database": to_db or state.database}
    target_uri: str | None
    if to_data_dir is not None:
        # The embedded database in DIR, even with COSMOS_MONGO_URI set: that names the source.
        chosen.update(uri=None, data_dir=to_data_dir)
        target_uri = None
    else:
        # --to URI; or, with --to-db alone, the server or directory the source is in.
        if state.data_dir is not None:
            chosen["data_dir"] = state.data_dir
        target_uri = to_uri if to_uri is not None else state.uri
    target_settings = Settings(**chosen)
    if _same_store(state.settings(), state.uri, target_settings, target_uri):
        raise click.UsageError(f"the target is the source: {state.where()}")
    source = state.store()
    outcome: dict[str, dict[str, int]] = {}
    with (
        CosmosStore.connect(target_uri, settings=target_settings) as target,
        _progress("copy") as say,
    ):
        started_empty = all(_counted(target, name) == 0 for name in COLLECTIONS)
        for name in COLLECTIONS:
            totals = {"inserted": 0, "identical": 0, "differing": 0}
            total = _stored(source, name)
            for batch in _batches(source.iter_documents(name), 500):
                inserted, identical, differing = target.put_documents(name, batch)
                totals["inserted"] += inserted
                totals["identical"] += identical
                totals["differing"] += differing
                say(name, sum(totals.values()), total)
            outcome[name] = totals
        missing = _missing_after_copy(target, outcome)
        # A target that started empty holds only documents checked on the way in, so the
        # full checks would read them all again to learn what the source already knew.
        report = target.verify(quick=started_empty)
    if as_json:
        summary = {"verify_ok": report.ok, "verify": "quick" if report.quick else "full"}
        click.echo(json.dumps({**outcome, "missing": missing, **summary}, indent=2))
    else:
        for collection, totals in outcome.items():
            click.echo(
                f"{collection}: {totals['inserted']:,} copied, "
                f"{totals['identical']:,} already there, "
                f"{totals['differing']:,} differ (left as they are)"
            )
        for collection, count in missing.items():
            console.print(
                f"[red]FAIL[/red] {collection} copied but missing from the target: {count:,} "
                "(did another process delete them?)"
            )
        click.echo(f"Verification of {target_settings.location(target_uri)}:")
        _print_verification(report)
        if report.quick:
            click.echo(
                "every copied document was checked against the data model as it was written; "
                "`cosmos-mongo verify` on the target runs the full checks"
            )
    if missing or not report.ok:
        raise SystemExit(1)


def _counted(store: CosmosStore, collection: str) -> int:
    """How many documents ``collection`` holds, counted (not the server's estimate)."""
    return int(store.db[collection].count_documents({}))


def _missing_after_copy(target: CosmosStore, outcome: dict[str, dict[str, int]]) -> dict[str, int]:
    """Per collection, how many fewer documents the target holds than the copy wrote or found
    there (none, unless something deleted them meanwhile)."""
    missing = {}
    for name, totals in outcome.items():
        if (held := _counted(target, name)) < (expected := sum(totals.values())):
            missing[name] = expected - held
    return missing


DEMO_PROMPTS = (
    (
        "robot-blocks",
        "A robot arm picks up three wooden blocks and stacks them on a workbench",
        {"video": "inputs/robot_blocks.mp4", "depth": "inputs/robot_blocks_depth.mp4"},
    ),
    (
        "night-drive",
        "A car drives down a rainy city street at night",
        {"video": "inputs/night_drive.mp4", "seg": "inputs/night_drive_seg.mp4"},
    ),
    (
        "warehouse",
        "Two humanoid robots walk through a warehouse carrying boxes",
        {"video": "inputs/warehouse.mp4"},
    ),
    ("farm-drone", "A drone flies low over farmland at sunset", {"video": "inputs/farm.mp4"}),
)
# The demo's hand edit of the first enhanced prompt: a detail, and a time of day that the
# enhancer, run again, turns into lighting.
DEMO_EDIT = (
    "three wooden blocks and stacks them on a workbench.",
    "three red wooden blocks and stacks them on a workbench at sunset.",
)


# Every demo prompt carries this parameter (enhancing copies it): how the demo finds its own
# prompts to replace when it runs again, and leaves a user's alone.
DEMO_MARK = ("seeded_by", "cosmos-mongo demo")


def _remove_earlier_demo(store: CosmosStore) -> int:
    """Delete the prompts (and with them the runs) an earlier demo seeded; how many."""
    key, value = DEMO_MARK
    earlier = [p.id for p in store.iter_prompts() if p.parameters.get(key) == value]
    # Newest first: prompts enhanced from another go before it, so no run outlives its prompt.
    for prompt_id in earlier:
        store.delete_prompt(prompt_id, force=True)
    return len(earlier)


def _edited(text: str) -> str:
    old, new = DEMO_EDIT
    # Another enhancer words it otherwise: the edit then comes as a sentence of its own.
    return text.replace(old, new) if old in text else f"{text} The blocks are red; it is sunset."


def _indented(text: str) -> str:
    """``text`` indented by two, wrapped to the terminal (lines end without padding)."""
    return textwrap.fill(
        text, width=max(console.width, 40), initial_indent="  ", subsequent_indent="  "
    )


def _print_before_after(name: str, before: str, model: str, prompt_id: str, after: str) -> None:
    console.print(f"[bold]{escape(name)}[/bold], as written ({word_count(before)} words):")
    click.echo(_indented(before) + "\n")
    console.print(
        f"[bold]enhanced by {escape(model)}[/bold] into {prompt_id} ({word_count(after)} words):"
    )
    click.echo(_indented(after) + "\n")


@cli.command()
@_json_option
@click.pass_context
def demo(ctx: click.Context, as_json: bool) -> None:
    """Seed sample Cosmos prompts, enhance them, and show the results.

    Uses the database cosmos_demo unless --db (or COSMOS_MONGO_DATABASE) names another.
    """
    state: _Context = ctx.obj
    source = ctx.parent.get_parameter_source("database") if ctx.parent else None
    if source in (None, click.core.ParameterSource.DEFAULT):
        state.database = "cosmos_demo"
    store = state.store()
    removed = _remove_earlier_demo(store)
    if not as_json:
        click.echo(f"Demo on {state.where()}")
        if removed:
            click.echo(f"(replaced the {removed} prompt(s) an earlier demo seeded)")
        model = store.enhancer.model
        # The offline template is the default only while no model is configured: say how.
        offline = " (offline; COSMOS_MONGO_ENHANCER_BASE_URL names a model)"
        click.echo(f"Enhancer: {model}{offline if model == 'template-v1' else ''}\n")
    seeded = [
        store.create_prompt(
            text,
            inputs,
            {"name": name, "negative_prompt": "blurry, distorted", DEMO_MARK[0]: DEMO_MARK[1]},
        )
        for name, text, inputs in DEMO_PROMPTS
    ]
    first = store.enhance_prompt(seeded[0].id)
    store.enhance_prompt(seeded[1].id)
    store.enhance_prompt(seeded[2].id, create_new=False)
    store.enhance_prompt(seeded[3].id)
    # An editor (a person or an agent) refines the enhanced text into a new prompt; enhancing
    # that in place rewrites the enhancer's own sentences to follow the edit, repeating none.
    second = store.enhance_prompt(
        first.enhanced_prompt_id,
        enhanced_text=_edited(first.enhanced_text),
        enhancement_model="demo-editor",
    )
    store.enhance_prompt(second.enhanced_prompt_id, create_new=False)
    if as_json:
        shown = {
            "enhanced_prompts": [
                p.model_dump(mode="json") for p in store.list_enhanced_prompts(limit=10)
            ],
            "lineage": store.get_lineage(seeded[0].id).model_dump(mode="json"),
            "verification": store.verify().model_dump(mode="json"),
        }
        click.echo(json.dumps(shown, indent=2))
        return
    name, text, _ = DEMO_PROMPTS[0]
    _print_before_after(
        name, text, first.enhancement_model, first.enhanced_prompt_id, first.enhanced_text
    )
    _prompt_table(
        store.list_enhanced_prompts(limit=10), "Enhanced prompts (newest first)", all_enhanced=True
    )
    click.echo(f"\nLineage of {seeded[0].id}:")
    console.print(_lineage_tree(store.get_lineage(seeded[0].id)))
    click.echo("\nVerification:")
    _print_verification(store.verify())
    # Copyable commands that fit 80 columns: the edited prompt's final text, and how it got it.
    where = f"cosmos-mongo --db {state.database}"
    click.echo(f"\nNext, on this database:\n  {where} prompt show {second.enhanced_prompt_id}")
    click.echo(f"  {where} details {second.enhanced_prompt_id}")


def main() -> None:
    """Entry point of the ``cosmos-mongo`` script."""
    cli(prog_name="cosmos-mongo")


if __name__ == "__main__":
    main()
