"""``CosmosStore`` (sync) and ``AsyncCosmosStore`` (async): thin twins over one set of workflows.

Each public method is one line: it passes the workflow generator from
:mod:`cosmos_mongo.workflows` to the twin's driver (:func:`~cosmos_mongo.ops.run_sync` or
:func:`~cosmos_mongo.ops.run_async`). The docstrings live on ``CosmosStore`` and are copied to
the async twin, so both document the same behaviour from one text.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar
from urllib.parse import parse_qs, unquote_plus

from cosmos_mongo import enhancement as enh
from cosmos_mongo import importer, legacy, watching
from cosmos_mongo import validation as v
from cosmos_mongo import workflows as wf
from cosmos_mongo.config import Settings, mongodb_hosts
from cosmos_mongo.embedded import AsyncEmbeddedDatabase, check_database_name, open_embedded
from cosmos_mongo.enhancement import DEFAULT_STALE_AFTER
from cosmos_mongo.enhancers import Enhancer, enhancer_from_settings, resolve_enhancer
from cosmos_mongo.errors import InvalidInputError, StorageError
from cosmos_mongo.importer import ImportReport, Progress
from cosmos_mongo.models import (
    DeletionPreview,
    DeletionResult,
    EnhancementDetails,
    EnhancementResult,
    IndexReport,
    Lineage,
    Listing,
    MigrationReport,
    Prompt,
    RepairReport,
    Run,
    VerificationReport,
)
from cosmos_mongo.ops import (
    Flow,
    Services,
    read_one_sync,
    run_async,
    run_sync,
    sessions_supported,
    translate,
    unreachable_host,
)
from cosmos_mongo.validation import UNSET, ModelType, RunStatus, Unset
from cosmos_mongo.watching import ChangeWatch, Watched

T = TypeVar("T")

_URI_SCHEMES = ("mongodb://", "mongodb+srv://")


def _resolve(uri: str | None, database: str, settings: Settings) -> str | None:
    """The connection string to use, or None for the embedded default."""
    if uri is None and settings.uri is not None:
        uri = settings.uri.get_secret_value()
    if uri is not None and not uri.startswith(_URI_SCHEMES):
        # Never echo the value: it may hold a password.
        raise InvalidInputError("uri", "must start with mongodb:// or mongodb+srv://")
    check_database_name(database)
    return uri


def _open(
    uri: str | None, database: str | None, settings: Settings, *, asynchronous: bool
) -> tuple[Any, Callable[[], Any], Callable[[], Any] | None]:
    """A database for ``connect``, the function that closes its client, and the one that
    pings its server within ``timeout_ms`` (None for the embedded default). The ping is
    synchronous: the async twin runs it on a worker thread."""
    database = settings.database if database is None else database
    resolved = _resolve(uri, database, settings)
    if resolved is None:
        embedded = open_embedded(settings.data_dir, database, read_only=settings.read_only)
        if asynchronous:
            adapter = AsyncEmbeddedDatabase(embedded)
            return adapter, adapter.close, None
        return embedded, embedded.close, None
    import pymongo
    from pymongo import AsyncMongoClient, MongoClient
    from pymongo.errors import PyMongoError

    client_class: Any = AsyncMongoClient if asynchronous else MongoClient
    options = {"tz_aware": True, "appname": "cosmos-mongo", **client_options(resolved, settings)}
    try:
        client = client_class(resolved, **options)
    except (PyMongoError, ValueError, TypeError) as exc:  # pymongo raises ValueError for some
        raise StorageError(
            f"cannot connect to MongoDB at {mongodb_hosts(resolved)}: the connection string "
            f"is not valid: {_without_secrets(str(exc), resolved)}"
        ) from exc

    def ping() -> None:
        if not asynchronous:
            with pymongo.timeout(settings.timeout_ms / 1000):
                client.admin.command("ping")
            return
        # A synchronous twin asks: an AsyncMongoClient closed while its monitor connects
        # leaves that socket open (pymongo cancels the connect without closing it), which
        # every failed start would do.
        with MongoClient(resolved, **options) as twin, pymongo.timeout(settings.timeout_ms / 1000):
            twin.admin.command("ping")

    return client[database], client.close, ping


def _without_secrets(message: str, uri: str) -> str:
    """The driver's complaint about ``uri``, first line, with the user name and password (as
    written and decoded) and the whole string masked: it may quote any of them."""
    netloc = uri.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0]
    secrets = {uri}
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        secrets.update({userinfo, *userinfo.split(":", 1)})
        secrets.update({unquote_plus(part) for part in list(secrets)})
    text = (message.strip().splitlines() or [""])[0]
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = re.sub(rf"(?<![\w%]){re.escape(secret)}(?![\w%])", "***", text)
    return text[:200] or "no reason given"


@contextmanager
def _reaching(settings: Settings) -> Iterator[None]:
    """Around connect's one ping, bounded by ``timeout_ms``: a start with nothing listening
    fails in seconds with one line naming the host, while operations keep their own, longer
    limit (a primary may take an election to answer them)."""
    from pymongo.errors import PyMongoError, ServerSelectionTimeoutError

    seconds = settings.timeout_ms / 1000
    try:
        yield
    except ServerSelectionTimeoutError as exc:
        raise StorageError(
            f"MongoDB unreachable (ServerSelectionTimeoutError): {unreachable_host(exc)}; no "
            f"answer within {seconds:g} s (COSMOS_MONGO_TIMEOUT_MS)",
            reason="unreachable",
        ) from exc
    except PyMongoError as exc:
        raise translate(exc) from exc


# How long pymongo waits for a suitable server when no operation time limit applies
# (operation_timeout_ms=0): its own default, long enough for an election. Under a limit,
# pymongo waits for a server for as long as the operation has left instead.
_SERVER_SELECTION_TIMEOUT_MS: Final = 30_000


def client_options(uri: str, settings: Settings) -> dict[str, Any]:
    """The client's concerns and timeouts: ours, except those the URI sets itself."""
    timeouts: dict[str, Any] = {
        "serverSelectionTimeoutMS": _SERVER_SELECTION_TIMEOUT_MS,
        "connectTimeoutMS": settings.timeout_ms,
    }
    if settings.operation_timeout_ms:
        # Every operation, its wait for a primary and a retried write's second attempt
        # included, ends within this; the server is told the rest as maxTimeMS.
        timeouts["timeoutMS"] = settings.operation_timeout_ms
    return _not_set_in(uri, {**_CONCERNS, **timeouts})


class Opening:
    """What :meth:`AsyncCosmosStore.connect` returns: await it for the store, or enter it
    with ``async with`` to have the store closed on exit."""

    def __init__(self, opening: Coroutine[Any, Any, AsyncCosmosStore]) -> None:
        self._opening = opening
        self._store: AsyncCosmosStore | None = None

    def __await__(self) -> Generator[Any, None, AsyncCosmosStore]:
        return self._opening.__await__()

    async def __aenter__(self) -> AsyncCosmosStore:
        self._store = await self._opening
        return self._store

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._store is not None:
            await self._store.aclose()


def _should_ensure_indexes(asked: bool | None, settings: Settings) -> bool:
    """``connect``'s argument wins; else the settings; never on a read-only store."""
    wanted = settings.ensure_indexes if asked is None else asked
    return wanted and not settings.read_only


# What the workflows assume: a read sees the writes before it (primary), and an answered
# write survives a failover (majority, journaled). The server's default w is not always
# majority (a primary-secondary-arbiter set answers w: 1), so it is said, not assumed.
_CONCERNS: Final = {"w": "majority", "journal": True, "readPreference": "primary"}


def explicit_concerns(uri: str) -> dict[str, Any]:
    """The concerns to pass to the client: ours, except those the URI sets itself (for people
    who know why)."""
    return _not_set_in(uri, _CONCERNS)


def _not_set_in(uri: str, options: Mapping[str, Any]) -> dict[str, Any]:
    query = uri.split("?", 1)[1] if "?" in uri else ""
    given = {key.lower() for key in parse_qs(query, keep_blank_values=True)}
    return {option: value for option, value in options.items() if option.lower() not in given}


class _StoreBase:
    """What the twins share: the database, the enhancer, and how a call gets its services."""

    def __init__(
        self,
        db: Any,
        *,
        enhancer: Enhancer | None = None,
        settings: Settings | None = None,
        _on_close: Callable[[], Any] | None = None,
    ) -> None:
        settings = settings or Settings()
        self.db = db
        self.enhancer: Enhancer = enhancer or enhancer_from_settings(settings)
        self.enhancement_timeout = settings.enhancement_timeout
        self.read_only = settings.read_only
        self._causal_sessions = sessions_supported(db)
        self._on_close = _on_close
        self._last_services: Services | None = None
        # A read by _id asks its services only for the session: made once, not per call.
        self._reading = Services(causal_sessions=self._causal_sessions)

    def _services(self, enhancer: Enhancer | None = None) -> Services:
        # Made again only when what it holds changed: every call, a read by _id included,
        # passes through here.
        chosen, services = enhancer or self.enhancer, self._last_services
        if (
            services is None
            or services.enhancer is not chosen
            or services.read_only != self.read_only
            or services.timeout != self.enhancement_timeout
        ):
            services = Services(
                chosen, self.enhancement_timeout, self.read_only, self._causal_sessions
            )
            self._last_services = services
        return services

    def _enhancer_for(self, enhancement_model: object, enhanced_text: object) -> Enhancer:
        model = v.check_optional_text(enhancement_model, "enhancement_model", 200)
        text = enhanced_text if isinstance(enhanced_text, str) else None
        return resolve_enhancer(self.enhancer, model, text)


class CosmosStore(_StoreBase):
    """Prompts and runs in MongoDB, through pymongo (or the embedded default).

    ``CosmosStore(db)`` works over any pymongo ``Database`` (mongomock included); create the
    client with ``tz_aware=True``. :meth:`connect` opens one for you. The enhancer is
    ``enhancer`` if given, else the one the settings (environment) choose.
    """

    @classmethod
    def connect(
        cls,
        uri: str | None = None,
        database: str | None = None,
        *,
        settings: Settings | None = None,
        ensure_indexes: bool | None = None,
        enhancer: Enhancer | None = None,
    ) -> CosmosStore:
        """Open a store on ``uri``, else ``COSMOS_MONGO_URI``, else the embedded default.

        ``database`` defaults to the settings' (``COSMOS_MONGO_DATABASE``, else ``cosmos``).

        The embedded default lives in ``COSMOS_MONGO_DATA_DIR`` (default: the platform's user
        data directory). Missing indexes are created unless ``ensure_indexes=False`` (default:
        ``COSMOS_MONGO_ENSURE_INDEXES``, on) or the settings are read-only
        (``COSMOS_MONGO_READ_ONLY``): then nothing is written, every write raises
        ``ReadOnlyError``, and a missing embedded database reads as empty and is not created.

        On a server, ``connect`` pings it once and waits at most ``COSMOS_MONGO_TIMEOUT_MS``
        (``Settings.timeout_ms``, 5 s) for the answer. Each operation afterwards may take up
        to ``COSMOS_MONGO_OPERATION_TIMEOUT_MS`` (30 s), its wait for a primary included, so a
        write retried across an election lands.

        ``AsyncCosmosStore.connect`` is awaited, ``store = await AsyncCosmosStore.connect(...)``,
        or entered, ``async with AsyncCosmosStore.connect(...) as store:``, which closes the
        store on exit; ``CosmosStore.connect`` returns the store.

        Raises:
            InvalidInputError: ``uri`` is not a mongodb:// or mongodb+srv:// string, or the
                database name is not valid.
            StorageError: the database cannot be opened, or no server answered within
                ``timeout_ms`` (``reason`` ``"unreachable"``; the message names the host).
        """
        settings = settings or Settings()
        db, on_close, ping = _open(uri, database, settings, asynchronous=False)
        store = cls(db, enhancer=enhancer, settings=settings, _on_close=on_close)
        try:
            if ping is not None:
                with _reaching(settings):
                    ping()
            if _should_ensure_indexes(ensure_indexes, settings):
                store.ensure_indexes()
        except BaseException:
            store.close()
            raise
        return store

    def _run(self, flow: Flow[T], enhancer: Enhancer | None = None) -> T:
        return run_sync(self.db, flow, self._services(enhancer))

    def close(self) -> None:
        """Close the client if this store opened it (``connect``); otherwise do nothing."""
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def ensure_indexes(self) -> list[str]:
        """Create the product's missing indexes; safe to call again. Reads the existing ones
        first: an identical index under another name is reused. Returns the names in use.

        Raises:
            StorageError: the server refused (for example, a user without index rights), or
                an index conflicts: one of ours defined otherwise (fix it with
                :meth:`reconcile_indexes`), or another index with our keys and other options.
        """
        return self._run(wf.ensure_indexes())

    def reconcile_indexes(self, apply: bool = False) -> IndexReport:
        """Compare the indexes with this version's. With ``apply=True``, drop and recreate
        the library's own indexes whose definition changed, drop its retired ones, and create
        the missing ones. Indexes it does not own are never dropped.

        Raises:
            InvalidInputError: ``apply`` is not a boolean.
            StorageError: the server refused.
        """
        return self._run(wf.reconcile_indexes(apply))

    def create_prompt(
        self,
        prompt_text: str,
        inputs: dict[str, Any] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Prompt:
        """Store a new prompt and return it.

        ``inputs`` holds the input files (``video``, ``depth``, ``seg``, ...); ``parameters``
        the generation parameters (``name``, ``negative_prompt``, ...). Both are JSON-like.

        Raises:
            InvalidInputError: empty or over-long text, NUL bytes, keys with ``$`` or ``.``,
                values that are not JSON-like, or legacy enhancement keys in ``parameters``.
        """
        return self._run(wf.create_prompt(prompt_text, inputs, parameters))

    def get_prompt(self, prompt_id: str) -> Prompt | None:
        """The prompt with this id, or None.

        Raises:
            InvalidInputError: ``prompt_id`` is not a ``ps_`` id.
            InvalidDocumentError: the stored prompt does not fit the model (edited by
                hand?): names the field and the rule.
        """
        return read_one_sync(self.db, wf.PROMPT_BY_ID, prompt_id, self._reading)

    def list_prompts(
        self, limit: int = 50, offset: int = 0, *, enhanced: bool | None = None
    ) -> Listing[Prompt]:
        """Prompts, newest first; ``offset`` pages through. ``enhanced=True`` lists only
        enhanced prompts (served by the partial index), ``False`` only the others.

        A stored prompt that does not fit the model (edited by hand?) is left out, named in
        the answer's ``skipped`` (a :class:`~cosmos_mongo.models.Listing`, which is a list)
        and in a warning on the ``cosmos_mongo`` logger.

        Raises:
            InvalidInputError: ``limit`` outside 1-1000, a negative ``offset``, or an
                ``enhanced`` that is not a boolean or None.
        """
        return self._run(wf.list_prompts(limit, offset, enhanced))

    def prompts_page(
        self,
        after: tuple[datetime | None, Any] | None = None,
        limit: int = 50,
        *,
        enhanced: bool | None = None,
    ) -> wf.Page[Prompt]:
        """One page of :meth:`iter_prompts`: at most ``limit`` prompts, newest first, after
        ``after`` (the previous page's ``after``; None for the first page). The page's
        ``items`` is a :class:`~cosmos_mongo.models.Listing` (its ``skipped`` names stored
        prompts that do not fit the model); its ``after`` is None after the last page. A
        prompt inserted between two pages never shifts the next one, as an offset would.

        Raises:
            InvalidInputError: ``limit`` outside 1-1000, a bad ``enhanced``, or an ``after``
                that is not a previous page's.
        """
        return self._run(wf.prompts_page(after, limit, enhanced))

    def runs_page(
        self,
        after: tuple[datetime | None, Any] | None = None,
        limit: int = 50,
        prompt_id: str | None = None,
        model_type: ModelType | None = None,
        status: RunStatus | None = None,
    ) -> wf.Page[Run]:
        """One page of :meth:`iter_runs`: at most ``limit`` runs (of a prompt, type or
        status, if given), newest first, after ``after``, as :meth:`prompts_page` pages.

        Raises:
            InvalidInputError: a bad filter value, ``limit`` outside 1-1000, or an ``after``
                that is not a previous page's.
        """
        return self._run(wf.runs_page(after, limit, prompt_id, model_type, status))

    def iter_prompts(
        self, *, enhanced: bool | None = None, batch_size: int = 500
    ) -> Iterator[Prompt]:
        """Every prompt, newest first, fetched ``batch_size`` at a time by keyset paging on
        ``(created_at, _id)``: as cheap at the millionth prompt as at the first.

        A stored prompt that does not fit the model (edited by hand?) is left out and named in
        a warning on the ``cosmos_mongo`` logger; ``verify()`` lists every such document.

        Raises:
            InvalidInputError: ``batch_size`` outside 1-1000, or a bad ``enhanced``.
        """
        after: tuple[Any, Any] | None = None
        while True:
            page = self._run(wf.prompts_page(after, batch_size, enhanced))
            yield from page.items
            if page.after is None:
                return
            after = page.after

    def iter_runs(
        self,
        prompt_id: str | None = None,
        model_type: ModelType | None = None,
        status: RunStatus | None = None,
        *,
        batch_size: int = 500,
    ) -> Iterator[Run]:
        """Every run (of a prompt, type or status, if given), newest first, fetched
        ``batch_size`` at a time by keyset paging on ``(created_at, _id)``.

        A stored run that does not fit the model (edited by hand?) is left out and named in
        a warning on the ``cosmos_mongo`` logger; ``verify()`` lists every such document.

        Raises:
            InvalidInputError: a bad filter value, or ``batch_size`` outside 1-1000.
        """
        after: tuple[Any, Any] | None = None
        while True:
            page = self._run(wf.runs_page(after, batch_size, prompt_id, model_type, status))
            yield from page.items
            if page.after is None:
                return
            after = page.after

    def iter_documents(
        self, collection: Literal["prompts", "runs"], *, batch_size: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Every stored document of ``collection`` exactly as stored, by ``_id`` (numbers,
        then strings, then ObjectIds such as mongosh gives): for exporting and copying a
        store.

        Raises:
            InvalidInputError: another collection, or ``batch_size`` outside 1-1000.
        """
        position: tuple[int, Any] | None = None
        while True:
            page = self._run(wf.documents_page(collection, position, batch_size))
            yield from page.documents
            if page.following is None:
                return
            position = page.following

    def put_documents(
        self, collection: Literal["prompts", "runs"], documents: list[dict[str, Any]]
    ) -> tuple[int, int, int]:
        """Insert the documents whose ids ``collection`` lacks; never overwrite one. Returns
        ``(inserted, identical, differing)``: copying again inserts nothing. Every document is
        checked against the collection's model (:class:`Prompt` or :class:`Run`) before
        anything is written; one bad document refuses the whole batch.

        Raises:
            InvalidInputError: another collection; or a document that is not a dict, lacks
                ``_id``, breaks the model (named by its ``_id`` with the rule it breaks) or
                repeats an ``_id`` of the batch. Nothing of the batch is then written.
            StorageError: the database failed.
        """
        return self._run(wf.put_documents(collection, documents))

    def search_prompts(
        self,
        query: str,
        limit: int = 50,
        offset: int = 0,
        *,
        match: Literal["substring", "words"] = "substring",
        after: tuple[datetime | None, Any] | None = None,
    ) -> Listing[Prompt]:
        """Prompts whose text or name contains ``query`` (case-insensitive), newest first;
        ``offset`` pages through, or ``after``, the ``(created_at, id)`` of the last prompt
        of the previous page, which prompts added meanwhile do not shift. ``match="words"``
        instead finds prompts holding every word of ``query`` through the text index (a
        MongoDB server and :meth:`create_text_index`).

        A stored prompt that does not fit the model (edited by hand?) is left out, named in
        the answer's ``skipped`` (a :class:`~cosmos_mongo.models.Listing`, which is a list)
        and in a warning on the ``cosmos_mongo`` logger.

        Raises:
            InvalidInputError: empty query, ``limit`` outside 1-1000, a negative ``offset``,
                an ``after`` that is not a position, or ``match="words"`` where no text
                index serves it.
        """
        return self._run(wf.search_prompts(query, limit, offset, match, after))

    def create_text_index(self) -> str:
        """Create the text index that ``search_prompts(match="words")`` needs (on a MongoDB
        server; one text index per collection). Returns its name.

        Raises:
            StorageError: the server refused (for example, another text index exists).
        """
        return self._run(wf.create_text_index())

    def suggest_ids(
        self, kind: Literal["prompt", "run"], prefix: str = "", limit: int = 20
    ) -> list[str]:
        """Ids of prompts (``kind="prompt"``) or runs starting with ``prefix``, newest first:
        for completing an id someone is typing.

        Raises:
            InvalidInputError: an unknown ``kind``, a ``prefix`` no id can start with, or
                ``limit`` outside 1-1000.
        """
        return self._run(wf.suggest_ids(kind, prefix, limit))

    def update_prompt(
        self,
        prompt_id: str,
        *,
        prompt_text: str | None = None,
        parameters: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> Prompt:
        """Replace the text and/or merge ``parameters`` and ``inputs`` into the prompt's, key
        by key (other keys stay); returns the result.

        Raises:
            InvalidInputError: a bad id, text, parameters or inputs, or nothing to change.
            PromptNotFoundError: no prompt has this id.
            InvalidDocumentError: the change was stored, but the prompt does not fit the
                model (edited by hand?), so it cannot be returned.
        """
        return self._run(wf.update_prompt(prompt_id, prompt_text, parameters, inputs))

    def preview_prompt_deletion(self, prompt_id: str) -> DeletionPreview:
        """What :meth:`delete_prompt` would do: the runs it removes, the enhance runs it keeps
        as other prompts' provenance, the prompts derived from this one, and any enhancement
        in progress that would make it refuse.

        Raises:
            InvalidInputError: ``prompt_id`` is not a ``ps_`` id.
            PromptNotFoundError: no prompt has this id.
            InvalidDocumentError: the stored prompt does not fit the model (edited by
                hand?): names the field and the rule.
        """
        return self._run(wf.preview_prompt_deletion(prompt_id))

    def delete_prompt(self, prompt_id: str, *, force: bool = False) -> DeletionResult:
        """Delete the prompt and its runs, keeping the enhance runs that produced other prompts
        (their provenance: they keep pointing at this prompt).

        Raises:
            InvalidInputError: ``prompt_id`` is not a ``ps_`` id, or ``force`` not a boolean.
            PromptNotFoundError: no prompt has this id.
            ConflictError: an enhancement of the prompt is running (``.run_ids``); pass
                ``force=True`` to delete anyway, and that enhancement fails cleanly.
        """
        return self._run(wf.delete_prompt(prompt_id, force))

    def create_run(
        self,
        prompt_id: str,
        execution_config: dict[str, Any] | None = None,
        *,
        model_type: ModelType = "transfer",
        metadata: dict[str, Any] | None = None,
        initial_status: RunStatus = "pending",
    ) -> Run:
        """Record a new run of the prompt and return it.

        Raises:
            InvalidInputError: a bad id, ``model_type``, ``initial_status`` or mapping.
            PromptNotFoundError: no prompt has this id (or it was deleted while the run was
                being recorded: the run is then taken back).
        """
        return self._run(
            wf.create_run(prompt_id, execution_config, model_type, metadata, initial_status)
        )

    def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or None.

        Raises:
            InvalidInputError: ``run_id`` is not an ``rs_`` id.
            InvalidDocumentError: the stored run does not fit the model (edited by
                hand?): names the field and the rule.
        """
        return read_one_sync(self.db, wf.RUN_BY_ID, run_id, self._reading)

    def list_runs(
        self,
        prompt_id: str | None = None,
        model_type: ModelType | None = None,
        status: RunStatus | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Listing[Run]:
        """Runs, newest first, optionally of one prompt, model type and/or status.

        A stored run that does not fit the model (edited by hand?) is left out, named in
        the answer's ``skipped`` (a :class:`~cosmos_mongo.models.Listing`, which is a list)
        and in a warning on the ``cosmos_mongo`` logger.

        Raises:
            InvalidInputError: a bad id, model type, status, ``limit`` or ``offset``.
        """
        return self._run(wf.list_runs(prompt_id, model_type, status, limit, offset))

    def update_run_status(self, run_id: str, status: RunStatus) -> Run:
        """Set the status; ``running`` stamps ``started_at``, a final status ``completed_at``.

        Raises:
            InvalidInputError: a bad id or an unknown status.
            RunNotFoundError: no run has this id.
            InvalidDocumentError: the change was stored, but the run does not fit the
                model (edited by hand?), so it cannot be returned.
        """
        return self._run(wf.update_run(run_id, {"status": status}))

    def update_run(
        self,
        run_id: str,
        *,
        status: RunStatus | Unset = UNSET,
        outputs: dict[str, Any] | Unset | None = UNSET,
        metadata: dict[str, Any] | Unset | None = UNSET,
        execution_config: dict[str, Any] | Unset | None = UNSET,
        error_message: str | Unset | None = UNSET,
        log_path: str | Unset | None = UNSET,
        rating: int | Unset = UNSET,
    ) -> Run:
        """Set the fields given as keywords and return the updated run; the others stay.

        ``None`` clears ``outputs``, ``metadata`` and ``execution_config`` (to ``{}``) and
        ``error_message`` and ``log_path``. A keyword not listed here is a ``TypeError``.

        Raises:
            InvalidInputError: a bad id, no field given, or a bad value (checked at run time
                too, for callers without a type checker).
            RunNotFoundError: no run has this id.
            InvalidDocumentError: the change was stored, but the run does not fit the
                model (edited by hand?), so it cannot be returned.
        """
        return self._run(
            wf.update_run(
                run_id,
                wf.given(
                    status=status,
                    outputs=outputs,
                    metadata=metadata,
                    execution_config=execution_config,
                    error_message=error_message,
                    log_path=log_path,
                    rating=rating,
                ),
            )
        )

    def set_run_rating(self, run_id: str, rating: int) -> Run:
        """Rate the run from 1 to 5.

        Raises:
            InvalidInputError: a bad id, or a rating that is not a whole number from 1 to 5.
            RunNotFoundError: no run has this id.
            InvalidDocumentError: the change was stored, but the run does not fit the
                model (edited by hand?), so it cannot be returned.
        """
        return self._run(wf.update_run(run_id, {"rating": rating}))

    def delete_run(self, run_id: str) -> None:
        """Delete the run.

        Raises:
            InvalidInputError: ``run_id`` is not an ``rs_`` id.
            RunNotFoundError: no run has this id.
        """
        return self._run(wf.delete_run(run_id))

    def poll_changes(self, watch: ChangeWatch) -> list[Watched]:
        """The followed prompts and runs that changed (created, rewritten or deleted) since
        the previous call with this ``watch``; the first look at a document reports nothing.
        On the embedded default a look reads nothing unless some write committed (in any
        process) since the last one; on a server whose topology has change streams (a replica
        set or sharded cluster) the watch keeps one open and a look reads nothing unless it
        reported a change to prompts or runs (call :meth:`stop_watching` when done); on any
        other server, or while a stream is being reopened, a look reads the followed
        documents.

        Raises:
            StorageError: the database could not be read.
        """
        return self._run(watching.poll(watch))

    def stop_watching(self, watch: ChangeWatch) -> None:
        """Close the change stream ``watch`` holds on a server (nothing else holds one); a
        later :meth:`poll_changes` opens it again. A stream that fails to close is left to the
        driver.

        Raises:
            StorageError: the server could not be reached to start the call.
        """
        self._run(watching.stop(watch))

    def cancel_enhancement(self, run_id: str) -> Run | None:
        """Settle a running enhance run now, as ``repair`` settles a stale one: finished if its
        text was already recorded, else marked ``failed`` ("the enhancement task was cancelled
        ..."). Whoever is still enhancing it then finds the run settled and writes nothing
        more. Other runs, and runs no longer running, are left as they are. Returns the run as
        it is afterwards, or None if no run has this id.

        Raises:
            InvalidInputError: ``run_id`` is not an ``rs_`` id.
        """
        return self._run(enh.cancel_enhancement(run_id))

    def secret(self, name: str) -> bytes:
        """The store's secret called ``name`` (an identifier): 32 random bytes kept in the
        ``secrets`` collection, made on first use, the same for every process sharing the
        store. The MCP server keys its task ids with one.

        Raises:
            InvalidInputError: ``name`` is not an identifier.
            StorageError: the secret could not be made (a read-only store that has none) or
                read.
        """
        return self._run(wf.secret(name))

    def enhance_prompt(
        self,
        prompt_id: str,
        *,
        create_new: bool = True,
        enhancement_model: str | None = None,
        force_overwrite: bool = False,
        enhanced_text: str | None = None,
        on_run: Callable[[str], None] | None = None,
    ) -> EnhancementResult:
        """Rewrite the prompt into a detailed Cosmos prompt and record it on an enhance run.

        ``create_new=True`` stores the rewrite as a new prompt (the original's inputs and
        parameters, ``name`` + ``_enhanced``, ``enhanced: true``); ``create_new=False``
        overwrites the text in place. The text comes from ``enhanced_text`` when given (its
        author is ``enhancement_model``, default ``"agent"``), else from the enhancer
        (``enhancement_model`` may ask it for another model). The enhance run holds every
        detail; the prompt gains only ``parameters.enhanced``. ``on_run(run_id)`` is called
        as soon as the run is durably recorded (before the enhancer is asked), so a caller can
        follow the run while it works.

        Raises:
            InvalidInputError: a bad id, flag, model name or ``enhanced_text``.
            PromptNotFoundError: no prompt has this id.
            ConflictError: an overwrite of a prompt with non-enhance runs (pass
                ``force_overwrite=True`` or use ``create_new``), or the text changed meanwhile.
            EnhancementError: the enhancer failed, timed out or returned nothing usable; the
                run is marked failed (``.run_id``) and no prompt is touched.
        """
        enhancer = self._enhancer_for(enhancement_model, enhanced_text)
        flow = enh.enhance_prompt(
            prompt_id,
            create_new,
            force_overwrite,
            enhanced_text,
            model=enhancer.model,
            on_run=on_run,
        )
        return self._run(flow, enhancer)

    def revert_enhancement(self, run_id: str) -> Prompt:
        """Restore the text an in-place enhancement replaced; returns the restored prompt.

        The run becomes ``cancelled`` with ``outputs.reverted_at``.

        Raises:
            InvalidInputError: ``run_id`` is not an ``rs_`` id.
            RunNotFoundError: no run has this id.
            PromptNotFoundError: the prompt it changed no longer exists.
            ConflictError: the run is not a completed overwrite enhancement, or the prompt has
                changed since it (revert later enhancements first).
            InvalidDocumentError: the change was stored, but the prompt does not fit the
                model (edited by hand?), so it cannot be returned.
        """
        return self._run(enh.revert_enhancement(run_id))

    def check_revert(self, run_id: str) -> None:
        """Check, reading only, that ``revert_enhancement(run_id)`` can go ahead now (ask the
        user only then); returns None if so.

        Raises:
            InvalidInputError: ``run_id`` is not an ``rs_`` id.
            RunNotFoundError: no run has this id.
            PromptNotFoundError: the prompt it changed no longer exists.
            ConflictError: the run is not a completed overwrite enhancement, or the prompt has
                changed since it (revert later enhancements first).
        """
        self._run(enh.check_revert(run_id))

    def get_enhancement_details(self, prompt_id: str) -> EnhancementDetails | None:
        """How the prompt got its current enhanced text, or None if it is not enhanced.

        Read from the latest completed enhance run whose result is this prompt; for legacy
        data with no such run, from the prompt's old keys (``run_id`` is then None).

        Raises:
            InvalidInputError: ``prompt_id`` is not a ``ps_`` id.
            InvalidDocumentError: the stored prompt does not fit the model (edited by
                hand?): names the field and the rule.
        """
        return self._run(enh.get_enhancement_details(prompt_id))

    def get_original_prompt(self, enhanced_prompt_id: str) -> Prompt | None:
        """The prompt this one was created from by a create_new enhancement, or None.

        An overwrite has no separate original (see ``get_enhancement_details``).

        Raises:
            InvalidInputError: ``enhanced_prompt_id`` is not a ``ps_`` id.
            InvalidDocumentError: the stored original does not fit the model (edited by
                hand?): names the field and the rule.
        """
        return self._run(enh.get_original_prompt(enhanced_prompt_id))

    def list_enhanced_prompts(self, limit: int = 100, offset: int = 0) -> Listing[Prompt]:
        """Enhanced prompts, newest first (served by the partial index on the flag);
        ``offset`` pages through.

        A stored prompt that does not fit the model (edited by hand?) is left out, named in
        the answer's ``skipped`` (a :class:`~cosmos_mongo.models.Listing`, which is a list)
        and in a warning on the ``cosmos_mongo`` logger.

        Raises:
            InvalidInputError: ``limit`` outside 1-1000, or a negative ``offset``.
        """
        return self._run(enh.list_enhanced_prompts(limit, offset))

    def get_enhancement_history(
        self,
        prompt_id: str,
        limit: int = 100,
        offset: int = 0,
        *,
        after: tuple[datetime | None, Any] | None = None,
    ) -> Listing[Run]:
        """Every enhance run where the prompt is the original, the result or the run's prompt,
        newest first, failed and reverted ones included; ``offset`` pages through, or
        ``after``, the ``(created_at, id)`` of the last run of the previous page.

        A stored run that does not fit the model (edited by hand?) is left out, named in
        the answer's ``skipped`` (a :class:`~cosmos_mongo.models.Listing`, which is a list)
        and in a warning on the ``cosmos_mongo`` logger. A deleted prompt whose enhancements
        were kept as another prompt's provenance still has those runs as its history.

        Raises:
            InvalidInputError: a bad id, ``limit``, ``offset`` or ``after``.
            PromptNotFoundError: no prompt has the id and no enhance run names it.
        """
        return self._run(enh.get_enhancement_history(prompt_id, limit, offset, after))

    def get_lineage(self, prompt_id: str) -> Lineage:
        """Ancestors up to the root and descendants down the tree, each edge with its run.

        Overwrites are not parents: they are listed as ``in_place`` enhancements. Other
        prompts and runs of the tree that do not fit the model are named in ``skipped``.

        Raises:
            InvalidInputError: ``prompt_id`` is not a ``ps_`` id.
            PromptNotFoundError: no prompt has this id.
            InvalidDocumentError: the stored prompt does not fit the model (edited by
                hand?): names the field and the rule.
        """
        return self._run(enh.get_lineage(prompt_id))

    def verify(
        self, *, stale_after: timedelta = DEFAULT_STALE_AFTER, quick: bool = False
    ) -> VerificationReport:
        """Check the enhancement data: prompts carry only the flag, enhance runs are complete,
        every lineage edge resolves, and nothing older than ``stale_after`` is half-finished.
        ``quick=True`` checks only for interrupted enhancements, reverts and deletions,
        through small indexes; the full checks read every run, and every prompt and run
        against the model (``invalid_documents``), a thousand at a time.

        Raises:
            InvalidInputError: ``stale_after`` is not a non-negative timedelta, or ``quick``
                not a boolean.
        """
        return self._run(enh.verify(stale_after, quick))

    def repair(
        self,
        *,
        stale_after: timedelta = DEFAULT_STALE_AFTER,
        progress: Progress | None = None,
        quick: bool = False,
    ) -> RepairReport:
        """Fix what ``verify`` finds: finish or roll back interrupted enhancements, reverts
        and deletions older than ``stale_after``, remove runs whose prompt is gone, make the
        flags agree with the runs, and migrate legacy data. Reports what it cannot fix.
        ``quick=True`` settles only the interrupted work, through small indexes (for a
        schedule); the other steps read every run. ``progress(stage, done, total)`` is called
        as each stage advances. On the embedded default the full repair first runs
        ``verify``'s storage checks and changes nothing if any damage is found; the quick one
        stops at the first read that meets damage.

        Raises:
            InvalidInputError: ``stale_after`` is not a non-negative timedelta, ``quick``
                not a boolean, or ``progress`` neither None nor callable.
            StorageError: the store is damaged (reason ``"damaged"``): nothing was changed;
                the message points to ``backup`` and ``rebuild-indexes``.
        """
        return self._run(enh.repair(stale_after, progress, quick))

    def migrate(self, dry_run: bool = True, *, progress: Progress | None = None) -> MigrationReport:
        """Move legacy enhancement metadata from prompts into runs; ``dry_run`` only reports.

        Idempotent: a second run changes nothing. Every helper answers the same before and
        after, except that legacy prompts without a run gain one (and so a ``run_id``).
        ``progress("legacy prompts", examined, total)`` is called after each batch.

        Raises:
            InvalidInputError: ``dry_run`` is not a boolean, or ``progress`` neither None nor
                callable.
        """
        return self._run(legacy.migrate(dry_run, progress))

    def import_sqlite(
        self,
        path: str | Path,
        *,
        batch_size: int = 500,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> ImportReport:
        """Import the predecessor's SQLite database (``outputs/cosmos.db``): prompts, then runs.

        Streams both tables in batches, converts JSON text and datetimes, keeps ids, and never
        stops for one bad row: it is reported as invalid with the reason. Re-running imports
        nothing twice and overwrites nothing. ``progress(table, done, total)`` is called after
        each batch. ``job_queue`` rows are counted, not imported.

        Raises:
            InvalidInputError: ``path`` is not a predecessor database or cannot be read (a
                name too long, say), or a bad option (``progress`` not callable, say).
            StorageError: the target database failed.
        """
        return self._run(importer.import_sqlite(path, batch_size, dry_run, progress))


class AsyncCosmosStore(_StoreBase):
    """The async twin of :class:`CosmosStore`: same methods, awaited; ``aclose`` to close.

    ``AsyncCosmosStore(db)`` works over a pymongo ``AsyncDatabase`` or a Motor database
    (mongomock-motor included).
    """

    @classmethod
    def connect(
        cls,
        uri: str | None = None,
        database: str | None = None,
        *,
        settings: Settings | None = None,
        ensure_indexes: bool | None = None,
        enhancer: Enhancer | None = None,
    ) -> Opening:
        """Open a store on ``uri``, else ``COSMOS_MONGO_URI``, else the embedded default.

        ``database`` defaults to the settings' (``COSMOS_MONGO_DATABASE``, else ``cosmos``).

        The embedded default lives in ``COSMOS_MONGO_DATA_DIR`` (default: the platform's user
        data directory). Missing indexes are created unless ``ensure_indexes=False`` (default:
        ``COSMOS_MONGO_ENSURE_INDEXES``, on) or the settings are read-only
        (``COSMOS_MONGO_READ_ONLY``): then nothing is written, every write raises
        ``ReadOnlyError``, and a missing embedded database reads as empty and is not created.

        On a server, ``connect`` pings it once and waits at most ``COSMOS_MONGO_TIMEOUT_MS``
        (``Settings.timeout_ms``, 5 s) for the answer. Each operation afterwards may take up
        to ``COSMOS_MONGO_OPERATION_TIMEOUT_MS`` (30 s), its wait for a primary included, so a
        write retried across an election lands.

        ``AsyncCosmosStore.connect`` is awaited, ``store = await AsyncCosmosStore.connect(...)``,
        or entered, ``async with AsyncCosmosStore.connect(...) as store:``, which closes the
        store on exit; ``CosmosStore.connect`` returns the store.

        Raises:
            InvalidInputError: ``uri`` is not a mongodb:// or mongodb+srv:// string, or the
                database name is not valid.
            StorageError: the database cannot be opened, or no server answered within
                ``timeout_ms`` (``reason`` ``"unreachable"``; the message names the host).
        """
        return Opening(cls._connect(uri, database, settings, ensure_indexes, enhancer))

    @classmethod
    async def _connect(
        cls,
        uri: str | None,
        database: str | None,
        settings: Settings | None,
        ensure_indexes: bool | None,
        enhancer: Enhancer | None,
    ) -> AsyncCosmosStore:
        settings = settings or Settings()
        db, on_close, ping = _open(uri, database, settings, asynchronous=True)
        store = cls(db, enhancer=enhancer, settings=settings, _on_close=on_close)
        try:
            if ping is not None:
                with _reaching(settings):
                    await asyncio.to_thread(ping)
            if _should_ensure_indexes(ensure_indexes, settings):
                await store.ensure_indexes()
        except BaseException:
            await store.aclose()
            raise
        return store

    async def _run(self, flow: Flow[T], enhancer: Enhancer | None = None) -> T:
        return await run_async(self.db, flow, self._services(enhancer))

    async def aclose(self) -> None:
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            closed = on_close()
            if inspect.isawaitable(closed):  # pymongo async awaits close(); Motor does not
                await closed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def ensure_indexes(self) -> list[str]:
        """Create the product's missing indexes; safe to call again. Reads the existing ones
        first: an identical index under another name is reused. Returns the names in use.

        Raises:
            StorageError: the server refused (for example, a user without index rights), or
                an index conflicts: one of ours defined otherwise (fix it with
                :meth:`reconcile_indexes`), or another index with our keys and other options.
        """
        return await self._run(wf.ensure_indexes())

    async def reconcile_indexes(self, apply: bool = False) -> IndexReport:
        """Compare the indexes with this version's. With ``apply=True``, drop and recreate
        the library's own indexes whose definition changed, drop its retired ones, and create
        the missing ones. Indexes it does not own are never dropped.

        Raises:
            InvalidInputError: ``apply`` is not a boolean.
            StorageError: the server refused.
        """
        return await self._run(wf.reconcile_indexes(apply))

    async def create_prompt(
        self,
        prompt_text: str,
        inputs: dict[str, Any] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Prompt:
        """Store a new prompt and return it.

        ``inputs`` holds the input files (``video``, ``depth``, ``seg``, ...); ``parameters``
        the generation parameters (``name``, ``negative_prompt``, ...). Both are JSON-like.

        Raises:
            InvalidInputError: empty or over-long text, NUL bytes, keys with ``$`` or ``.``,
                values that are not JSON-like, or legacy enhancement keys in ``parameters``.
        """
        return await self._run(wf.create_prompt(prompt_text, inputs, parameters))

    async def get_prompt(self, prompt_id: str) -> Prompt | None:
        """The prompt with this id, or None.

        Raises:
            InvalidInputError: ``prompt_id`` is not a ``ps_`` id.
            InvalidDocumentError: the stored prompt does not fit the model (edited by
                hand?): names the field and the rule.
        """
        return await self._run(wf.get_prompt(prompt_id))

    async def list_prompts(
        self, limit: int = 50, offset: int = 0, *, enhanced: bool | None = None
    ) -> Listing[Prompt]:
        """Prompts, newest first; ``offset`` pages through. ``enhanced=True`` lists only
        enhanced prompts (served by the partial index), ``False`` only the others.

        A stored prompt that does not fit the model (edited by hand?) is left out, named in
        the answer's ``skipped`` (a :class:`~cosmos_mongo.models.Listing`, which is a list)
        and in a warning on the ``cosmos_mongo`` logger.

        Raises:
            InvalidInputError: ``limit`` outside 1-1000, a negative ``offset``, or an
                ``enhanced`` that is not a boolean or None.
        """
        return await self._run(wf.list_prompts(limit, offset, enhanced))

    async def prompts_page(
        self,
        after: tuple[datetime | None, Any] | None = None,
        limit: int = 50,
        *,
        enhanced: bool | None = None,
    ) -> wf.Page[Prompt]:
        """One page of :meth:`iter_prompts`: at most ``limit`` prompts, newest first, after
        ``after`` (the previous page's ``after``; None for the first page). The page's
        ``items`` is a :class:`~cosmos_mongo.models.Listing` (its ``skipped`` names stored
        prompts that do not fit the model); its ``after`` is None after the last page. A
        prompt inserted between two pages never shifts the next one, as an offset would.

        Raises:
            InvalidInputError: ``limit`` outside 1-1000, a bad ``enhanced``, or an ``after``
                that is not a previous page's.
        """
        return await self._run(wf.prompts_page(after, limit, enhanced))

    async def runs_page(
        self,
        after: tuple[datetime | None, Any] | None = None,
        limit: int = 50,
        prompt_id: str | None = None,
        model_type: ModelType | None = None,
        status: RunStatus | None = None,
    ) -> wf.Page[Run]:
        """One page of :meth:`iter_runs`: at most ``limit`` runs (of a prompt, type or
        status, if given), newest first, after ``after``, as :meth:`prompts_page` pages.

        Raises:
            InvalidInputError: a bad filter value, ``limit`` outside 1-1000, or an ``after``
                that is not a previous page's.
        """
        return await self._run(wf.runs_page(after, limit, prompt_id, model_type, status))

    async def iter_prompts(
        self, *, enhanced: bool | None = None, batch_size: int = 500
    ) -> AsyncIterator[Prompt]:
        """Every prompt, newest first, fetched ``batch_size`` at a time by keyset paging on
        ``(created_at, _id)``: as cheap at the millionth prompt as at the first.

        A stored prompt that does not fit the model (edited by hand?) is left out and named in
        a warning on the ``cosmos_mongo`` logger; ``verify()`` lists every such document.

        Raises:
            InvalidInputError: ``batch_size`` outside 1-1000, or a bad ``enhanced``.
        """
        after: tuple[Any, Any] | None = None
        while True:
            page = await self._run(wf.prompts_page(after, batch_size, enhanced))
            for prompt in page.items:
                yield prompt
            if page.after is None:
                return
            after = page.after

    async def iter_runs(
        self,
        prompt_id: str | None = None,
        model_type: ModelType | None = None,
        status: RunStatus | None = None,
        *,
        batch_size: int = 500,
    ) -> AsyncIterator[Run]:
        """Every run (of a prompt, type or status, if given), newest first, fetched
        ``batch_size`` at a time by keyset paging on ``(created_at, _id)``.

        A stored run that does not fit the model (edited by hand?) is left out and named in
        a warning on the ``cosmos_mongo`` logger; ``verify()`` lists every such document.

        Raises:
            InvalidInputError: a bad filter value, or ``batch_size`` outside 1-1000.
        """
        after: tuple[Any, Any] | None = None
        while True:
            page = await self._run(wf.runs_page(after, batch_size, prompt_id, model_type, status))
            for run in page.items:
                yield run
            if page.after is None:
                return
            after = page.after

    async def iter_documents(
        self, collection: Literal["prompts", "runs"], *, batch_size: int = 500
    ) -> AsyncIterator[dict[str, Any]]:
        """Every stored document of ``collection`` exactly as stored, by ``_id`` (numbers,
        then strings, then ObjectIds such as mongosh gives): for exporting and copying a
        store.

        Raises:
            InvalidInputError: another collection, or ``batch_size`` outside 1-1000.
        """
        position: tuple[int, Any] | None = None
        while True:
            page = await self._run(wf.documents_page(collection, position, batch_size))
            for document in page.documents:
                yield document
            if page.following is None:
                return
            position = page.following

    async def put_documents(
        self, collection: Literal["prompts", "runs"], documents: list[dict[str, Any]]
    ) -> tuple[int, int, int]:
        """Insert the documents whose ids ``collection`` lacks; never overwrite one. Returns
        ``(inserted, identical, differing)``: copying again inserts nothing. Every document is
        checked against the collection's model (:class:`Prompt` or :class:`Run`) before
        anything is written; one bad document refuses the whole batch.

        Raises:
            InvalidInputError: another collection; or a document that is not a dict, lacks
                ``_id``, breaks the model (named by its ``_id`` with the rule it breaks) or
                repeats an ``_id`` of the batch. Nothing of the batch is then written.
            StorageError: the database failed.
        """
        return await self._run(wf.put_documents(collection, documents))

    async def search_prompts(
        self,
        query: str,
        limit: int = 50,
        offset: int = 0,
        *,
        match: Literal["substring", "words"] = "substring",
        after: tuple[datetime | None, Any] | None = None,
    ) -> Listing[Prompt]:
        """Prompts whose text or name contains ``query`` (case-insensitive), newest first;
        ``offset`` pages through, or ``after``, the ``(created_at, id)`` of the last prompt
        of the previous page, which prompts added meanwhile do not shift. ``match="words"``
        instead finds prompts holding every word of ``query`` through the text index (a
        MongoDB server and :meth:`create_text_index`).

        A stored prompt that does not fit the model (edited by hand?) is left out, named in
        the answer's ``skipped`` (a :class:`~cosmos_mongo.models.Listing`, which is a list)
        and in a warning on the ``cosmos_mongo`` logger.

        Raises:
            InvalidInputError: empty query, ``limit`` outside 1-1000, a negative ``offset``,
                an ``after`` that is not a position, or ``match="words"`` where no text
                index serves it.
        """
        return await self._run(wf.search_prompts(query, limit, offset, match, after))

    async def create_text_index(self) -> str:
        """Create the text index that ``search_prompts(match="words")`` needs (on a MongoDB
        server; one text index per collection). Returns its name.

        Raises:
            StorageError: the server refused (for example, another text index exists).
        """
        return await self._run(wf.create_text_index())

    async def suggest_ids(
        self, kind: Literal["prompt", "run"], prefix: str = "", limit: int = 20
    ) -> list[str]:
        """Ids of prompts (``kind="prompt"``) or runs starting with ``prefix``, newest first:
        for completing an id someone is typing.

        Raises:
            InvalidInputError: an unknown ``kind``, a ``prefix`` no id can start with, or
                ``limit`` outside 1-1000.
        """
        return await self._run(wf.suggest_ids(kind, prefix, limit))

    async def update_prompt(
        self,
        prompt_id: str,
        *,
        prompt_text: str | None = None,
        parameters: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> Prompt:
        """Replace the text and/or merge ``parameters`` and ``inputs`` into the prompt's, key
        by key (other keys stay); returns the result.

        Raises:
            InvalidInputError: a bad id, text, parameters or inputs, or nothing to change.
            PromptNotFoundError: no prompt has this id.
            InvalidDocumentError: the change was stored, but the prompt does not fit the
                model (edited by hand?), so it cannot be returned.
        """
        return await self._run(wf.update_prompt(prompt_id, prompt_text, parameters, inputs))

    async def preview_prompt_deletion(self, prompt_id: str) -> DeletionPreview:
        """What :meth:`delete_prompt` would do: the runs it removes, the enhance runs it keeps
        as other prompts' provenance, the prompts derived from this one, and any enhancement
        in progress that would make it refuse.

        Raises:
            InvalidInputError: ``prompt_id`` is not a ``ps_`` id.
            PromptNotFoundError: no prompt has this id.
            InvalidDocumentError: the stored prompt does not fit the model (edited by
                hand?): names the field and the rule.
        """
        return await self._run(wf.preview_prompt_deletion(prompt_id))

    async def delete_prompt(self, prompt_id: str, *, force: bool = False) -> DeletionResult:
        """Delete the prompt and its runs, keeping the enhance runs that produced other prompts
        (their provenance: they keep pointing at this prompt).

        Raises:
            InvalidInputError: ``prompt_id`` is not a ``ps_`` id, or ``force`` not a boolean.
            PromptNotFoundError: no prompt has this id.
            ConflictError: an enhancement of the prompt is running (``.run_ids``); pass
                ``force=True`` to delete anyway, and that enhancement fails cleanly.
        """
        return await self._run(wf.delete_prompt(prompt_id, force))

    async def create_run(
        self,
        prompt_id: str,
        execution_config: dict[str, Any] | None = None,
        *,
        model_type: ModelType = "transfer",
        metadata: dict[str, Any] | None = None,
        initial_status: RunStatus = "pending",
    ) -> Run:
        """Record a new run of the prompt and return it.

        Raises:
            InvalidInputError: a bad id, ``model_type``, ``initial_status`` or mapping.
            PromptNotFoundError: no prompt has this id (or it was deleted while the run was
                being recorded: the run is then taken back).
        """
        return await self._run(
            wf.create_run(prompt_id, execution_config, model_type, metadata, initial_status)
        )

    async def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or None.

        Raises:
            InvalidInputError: ``run_id`` is not an ``rs_`` id.
            InvalidDocumentError: the stored run does not fit the model (edited by
                hand?): names the field and the rule.
        """
        return await self._run(wf.get_run(run_id))

    async def list_runs(
        self,
        prompt_id: str | None = None,
        model_type: ModelType | None = None,
        status: RunStatus | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Listing[Run]:
        """Runs, newest first, optionally of one prompt, model type and/or status.

        A stored run that does not fit the model (edited by hand?) is left out, named in
        the answer's ``skipped`` (a :class:`~cosmos_mongo.models.Listing`, which is a list)
        and in a warning on the ``cosmos_mongo`` logger.

        Raises:
            InvalidInputError: a bad id, model type, status, ``limit`` or ``offset``.
        """
        return await self._run(wf.list_runs(prompt_id, model_type, status, limit, offset))

    async def update_run_status(self, run_id: str, status: RunStatus) -> Run:
        """Set the status; ``running`` stamps ``started_at``, a final status ``completed_at``.

        Raises:
            InvalidInputError: a bad id or an unknown status.
            RunNotFoundError: no run has this id.
            InvalidDocumentError: the change was stored, but the run does not fit the
                model (edited by hand?), so it cannot be returned.
        """
        return await self._run(wf.update_run(run_id, {"status": status}))

    async def update_run(
        self,
        run_id: str,
        *,
        status: RunStatus | Unset = UNSET,
        outputs: dict[str, Any] | Unset | None = UNSET,
        metadata: dict[str, Any] | Unset | None = UNSET,
        execution_config: dict[str, Any] | Unset | None = UNSET,
        error_message: str | Unset | None = UNSET,
        log_path: str | Unset | None = UNSET,
        rating: int | Unset = UNSET,
    ) -> Run:
        """Set the fields given as keywords and return the updated run; the others stay.

        ``None`` clears ``outputs``, ``metadata`` and ``execution_config`` (to ``{}``) and
        ``error_message`` and ``log_path``. A keyword not listed here is a ``TypeError``.

        Raises:
            InvalidInputError: a bad id, no field given, or a bad value (checked at run time
                too, for callers without a type checker).
            RunNotFoundError: no run has this id.
            InvalidDocumentError: the change was stored, but the run does not fit the
                model (edited by hand?), so it cannot be returned.
        """
        return await self._run(
            wf.update_run(
                run_id,
                wf.given(
                    status=status,
                    outputs=outputs,
                    metadata=metadata,
                    execution_config=execution_config,
                    error_message=error_message,
                    log_path=log_path,
                    rating=rating,
                ),
            )
        )

    async def set_run_rating(self, run_id: str, rating: int) -> Run:
        """Rate the run from 1 to 5.

        Raises:
            InvalidInputError: a bad id, or a rating that is not a whole number from 1 to 5.
            RunNotFoundError: no run has this id.
            InvalidDocumentError: the change was stored, but the run does not fit the
                model (edited by hand?), so it cannot be returned.
        """
        return await self._run(wf.update_run(run_id, {"rating": rating}))

    async def delete_run(self, run_id: str) -> None:
        """Delete the run.

        Raises:
            InvalidInputError: ``run_id`` is not an ``rs_`` id.
            RunNotFoundError: no run has this id.
        """
        return await self._run(wf.delete_run(run_id))

    async def poll_changes(self, watch: ChangeWatch) -> list[Watched]:
        """The followed prompts and runs that changed (created, rewritten or deleted) since
        the previous call with this ``watch``; the first look at a document reports nothing.
        On the embedded default a look reads nothing unless some write committed (in any
        process) since the last one; on a server whose topology has change streams (a replica
        set or sharded cluster) the watch keeps one open and a look reads nothing unless it
        reported a change to prompts or runs (call :meth:`stop_watching` when done); on any
        other server, or while a stream is being reopened, a look reads the followed
        documents.

        Raises:
            StorageError: the database could not be read.
        """
        return await self._run(watching.poll(watch))

    async def stop_watching(self, watch: ChangeWatch) -> None:
        """Close the change stream ``watch`` holds on a server (nothing else holds one); a
        later :meth:`poll_changes` opens it again. A stream that fails to close is left to the
        driver.

        Raises:
            StorageError: the server could not be reached to start the call.
        """
        await self._run(watching.stop(watch))

    async def cancel_enhancement(self, run_id: str) -> Run | None:
        """Settle a running enhance run now, as ``repair`` settles a stale one: finished if its
        text was already recorded, else marked ``failed`` ("the enhancement task was cancelled
        ..."). Whoever is still enhancing it then finds the run settled and writes nothing
        more. Other runs, and runs no longer running, are left as they are. Returns the run as
        it is afterwards, or None if no run has this id.

        Raises:
            InvalidInputError: ``run_id`` is not an ``rs_`` id.
        """
        return await self._run(enh.cancel_enhancement(run_id))

    async def secret(self, name: str) -> bytes:
        """The store's secret called ``name`` (an identifier): 32 random bytes kept in the
        ``secrets`` collection, made on first use, the same for every process sharing the
        store. The MCP server keys its task ids with one.

        Raises:
            InvalidInputError: ``name`` is not an identifier.
            StorageError: the secret could not be made (a read-only store that has none) or
                read.
        """
        return await self._run(wf.secret(name))

    async def enhance_prompt(
        self,
        prompt_id: str,
        *,
        create_new: bool = True,
        enhancement_model: str | None = None,
        force_overwrite: bool = False,
        enhanced_text: str | None = None,
        on_run: Callable[[str], None] | None = None,
    ) -> EnhancementResult:
        """Rewrite the prompt into a detailed Cosmos prompt and record it on an enhance run.

        ``create_new=True`` stores the rewrite as a new prompt (the original's inputs and
        parameters, ``name`` + ``_enhanced``, ``enhanced: true``); ``create_new=False``
        overwrites the text in place. The text comes from ``enhanced_text`` when given (its
        author is ``enhancement_model``, default ``"agent"``), else from the enhancer
        (``enhancement_model`` may ask it for another model). The enhance run holds every
        detail; the prompt gains only ``parameters.enhanced``. ``on_run(run_id)`` is called
        as soon as the run is durably recorded (before the enhancer is asked), so a caller can
        follow the run while it works.

        Raises:
            InvalidInputError: a bad id, flag, model name or ``enhanced_text``.
            PromptNotFoundError: no prompt has this id.
            ConflictError: an overwrite of a prompt with non-enhance runs (pass
                ``force_overwrite=True`` or use ``create_new``), or the text changed meanwhile.
            EnhancementError: the enhancer failed, timed out or returned nothing usable; the
                run is marked failed (``.run_id``) and no prompt is touched.
        """
        enhancer = self._enhancer_for(enhancement_model, enhanced_text)
        flow = enh.enhance_prompt(
            prompt_id,
            create_new,
            force_overwrite,
            enhanced_text,
            model=enhancer.model,
            on_run=on_run,
        )
        return await self._run(flow, enhancer)

    async def revert_enhancement(self, run_id: str) -> Prompt:
        """Restore the text an in-place enhancement replaced; returns the restored prompt.

        The run becomes ``cancelled`` with ``outputs.reverted_at``.

        Raises:
            InvalidInputError: ``run_id`` is not an ``rs_`` id.
            RunNotFoundError: no run has this id.
            PromptNotFoundError: the prompt it changed no longer exists.
            ConflictError: the run is not a completed overwrite enhancement, or the prompt has
                changed since it (revert later enhancements first).
            InvalidDocumentError: the change was stored, but the prompt does not fit the
                model (edited by hand?), so it cannot be returned.
        """
        return await self._run(enh.revert_enhancement(run_id))

    async def check_revert(self, run_id: str) -> None:
        """Check, reading only, that ``revert_enhancement(run_id)`` can go ahead now (ask the
        user only then); returns None if so.

        Raises:
            InvalidInputError: ``run_id`` is not an ``rs_`` id.
            RunNotFoundError: no run has this id.
            PromptNotFoundError: the prompt it changed no longer exists.
            ConflictError: the run is not a completed overwrite enhancement, or the prompt has
                changed since it (revert later enhancements first).
        """
        await self._run(enh.check_revert(run_id))

    async def get_enhancement_details(self, prompt_id: str) -> EnhancementDetails | None:
        """How the prompt got its current enhanced text, or None if it is not enhanced.

        Read from the latest completed enhance run whose result is this prompt; for legacy
        data with no such run, from the prompt's old keys (``run_id`` is then None).

        Raises:
            InvalidInputError: ``prompt_id`` is not a ``ps_`` id.
            InvalidDocumentError: the stored prompt does not fit the model (edited by
                hand?): names the field and the rule.
        """
        return await self._run(enh.get_enhancement_details(prompt_id))

    async def get_original_prompt(self, enhanced_prompt_id: str) -> Prompt | None:
        """The prompt this one was created from by a create_new enhancement, or None.

        An overwrite has no separate original (see ``get_enhancement_details``).

        Raises:
            InvalidInputError: ``enhanced_prompt_id`` is not a ``ps_`` id.
            InvalidDocumentError: the stored original does not fit the model (edited by
                hand?): names the field and the rule.
        """
        return await self._run(enh.get_original_prompt(enhanced_prompt_id))

    async def list_enhanced_prompts(self, limit: int = 100, offset: int = 0) -> Listing[Prompt]:
        """Enhanced prompts, newest first (served by the partial index on the flag);
        ``offset`` pages through.

        A stored prompt that does not fit the model (edited by hand?) is left out, named in
        the answer's ``skipped`` (a :class:`~cosmos_mongo.models.Listing`, which is a list)
        and in a warning on the ``cosmos_mongo`` logger.

        Raises:
            InvalidInputError: ``limit`` outside 1-1000, or a negative ``offset``.
        """
        return await self._run(enh.list_enhanced_prompts(limit, offset))

    async def get_enhancement_history(
        self,
        prompt_id: str,
        limit: int = 100,
        offset: int = 0,
        *,
        after: tuple[datetime | None, Any] | None = None,
    ) -> Listing[Run]:
        """Every enhance run where the prompt is the original, the result or the run's prompt,
        newest first, failed and reverted ones included; ``offset`` pages through, or
        ``after``, the ``(created_at, id)`` of the last run of the previous page.

        A stored run that does not fit the model (edited by hand?) is left out, named in
        the answer's ``skipped`` (a :class:`~cosmos_mongo.models.Listing`, which is a list)
        and in a warning on the ``cosmos_mongo`` logger. A deleted prompt whose enhancements
        were kept as another prompt's provenance still has those runs as its history.

        Raises:
            InvalidInputError: a bad id, ``limit``, ``offset`` or ``after``.
            PromptNotFoundError: no prompt has the id and no enhance run names it.
        """
        return await self._run(enh.get_enhancement_history(prompt_id, limit, offset, after))

    async def get_lineage(self, prompt_id: str) -> Lineage:
        """Ancestors up to the root and descendants down the tree, each edge with its run.

        Overwrites are not parents: they are listed as ``in_place`` enhancements. Other
        prompts and runs of the tree that do not fit the model are named in ``skipped``.

        Raises:
            InvalidInputError: ``prompt_id`` is not a ``ps_`` id.
            PromptNotFoundError: no prompt has this id.
            InvalidDocumentError: the stored prompt does not fit the model (edited by
                hand?): names the field and the rule.
        """
        return await self._run(enh.get_lineage(prompt_id))

    async def verify(
        self, *, stale_after: timedelta = DEFAULT_STALE_AFTER, quick: bool = False
    ) -> VerificationReport:
        """Check the enhancement data: prompts carry only the flag, enhance runs are complete,
        every lineage edge resolves, and nothing older than ``stale_after`` is half-finished.
        ``quick=True`` checks only for interrupted enhancements, reverts and deletions,
        through small indexes; the full checks read every run, and every prompt and run
        against the model (``invalid_documents``), a thousand at a time.

        Raises:
            InvalidInputError: ``stale_after`` is not a non-negative timedelta, or ``quick``
                not a boolean.
        """
        return await self._run(enh.verify(stale_after, quick))

    async def repair(
        self,
        *,
        stale_after: timedelta = DEFAULT_STALE_AFTER,
        progress: Progress | None = None,
        quick: bool = False,
    ) -> RepairReport:
        """Fix what ``verify`` finds: finish or roll back interrupted enhancements, reverts
        and deletions older than ``stale_after``, remove runs whose prompt is gone, make the
        flags agree with the runs, and migrate legacy data. Reports what it cannot fix.
        ``quick=True`` settles only the interrupted work, through small indexes (for a
        schedule); the other steps read every run. ``progress(stage, done, total)`` is called
        as each stage advances. On the embedded default the full repair first runs
        ``verify``'s storage checks and changes nothing if any damage is found; the quick one
        stops at the first read that meets damage.

        Raises:
            InvalidInputError: ``stale_after`` is not a non-negative timedelta, ``quick``
                not a boolean, or ``progress`` neither None nor callable.
            StorageError: the store is damaged (reason ``"damaged"``): nothing was changed;
                the message points to ``backup`` and ``rebuild-indexes``.
        """
        return await self._run(enh.repair(stale_after, progress, quick))

    async def migrate(
        self, dry_run: bool = True, *, progress: Progress | None = None
    ) -> MigrationReport:
        """Move legacy enhancement metadata from prompts into runs; ``dry_run`` only reports.

        Idempotent: a second run changes nothing. Every helper answers the same before and
        after, except that legacy prompts without a run gain one (and so a ``run_id``).
        ``progress("legacy prompts", examined, total)`` is called after each batch.

        Raises:
            InvalidInputError: ``dry_run`` is not a boolean, or ``progress`` neither None nor
                callable.
        """
        return await self._run(legacy.migrate(dry_run, progress))

    async def import_sqlite(
        self,
        path: str | Path,
        *,
        batch_size: int = 500,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> ImportReport:
        """Import the predecessor's SQLite database (``outputs/cosmos.db``): prompts, then runs.

        Streams both tables in batches, converts JSON text and datetimes, keeps ids, and never
        stops for one bad row: it is reported as invalid with the reason. Re-running imports
        nothing twice and overwrites nothing. ``progress(table, done, total)`` is called after
        each batch. ``job_queue`` rows are counted, not imported.

        Raises:
            InvalidInputError: ``path`` is not a predecessor database or cannot be read (a
                name too long, say), or a bad option (``progress`` not callable, say).
            StorageError: the target database failed.
        """
        return await self._run(importer.import_sqlite(path, batch_size, dry_run, progress))


def public_methods(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, callable) if not name.startswith("_")}
