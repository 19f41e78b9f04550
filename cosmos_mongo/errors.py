"""Exceptions raised by cosmos_mongo.

Every exception the library raises on purpose derives from one root::

    CosmosMongoError
    ├── InvalidInputError        bad argument; nothing was written
    ├── NotFoundError
    │   ├── PromptNotFoundError
    │   └── RunNotFoundError
    ├── ConflictError            the operation would break a rule about existing data
    ├── EnhancementError         the enhancer failed, timed out or returned nothing usable
    └── StorageError             the database or embedded store failed (driver errors land here);
        │                        .reason names why, .may_have_written says a write may have
        │                        landed even so
        ├── ReadOnlyError        a write on a store opened read-only; nothing was written
        └── InvalidDocumentError a stored document does not fit the data model (edited by hand?)

Driver errors (pymongo, sqlite3) are translated once, at the executor boundary, with
``raise StorageError(...) from exc`` so the original stays reachable as ``__cause__``.
"""

from __future__ import annotations


class CosmosMongoError(Exception):
    """Root of every error cosmos_mongo raises on purpose."""


class InvalidInputError(CosmosMongoError, ValueError):
    """An argument broke a rule. ``field`` names the argument, ``rule`` says what it must be."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


class NotFoundError(CosmosMongoError, LookupError):
    """A document that the operation needs does not exist."""

    kind = "document"

    def __init__(self, document_id: str) -> None:
        self.document_id = document_id
        super().__init__(f"{self.kind} {document_id!r} not found")


class PromptNotFoundError(NotFoundError):
    """No prompt has the given id."""

    kind = "prompt"


class RunNotFoundError(NotFoundError):
    """No run has the given id."""

    kind = "run"


class ConflictError(CosmosMongoError):
    """The operation conflicts with the current state of the data; nothing was changed.

    ``prompt_id`` and ``run_ids`` name the documents involved (when known); ``reason`` is a
    short machine-readable cause, e.g. ``"has_runs"``, ``"text_changed"``, ``"run_settled"``.
    """

    def __init__(
        self,
        message: str,
        *,
        prompt_id: str | None = None,
        run_ids: tuple[str, ...] | list[str] = (),
        reason: str | None = None,
    ) -> None:
        self.prompt_id = prompt_id
        self.run_ids = list(run_ids)
        self.reason = reason
        super().__init__(message)

    @property
    def run_id(self) -> str | None:
        """The first run involved, if any."""
        return self.run_ids[0] if self.run_ids else None


class EnhancementError(CosmosMongoError):
    """The enhancer failed, timed out or returned no usable text.

    ``run_id`` names the enhance run that was marked ``failed`` (None when the enhancer failed
    before any run existed, e.g. when raised by an enhancer backend itself).
    """

    def __init__(
        self, message: str, run_id: str | None = None, *, outcome: str = "marked failed"
    ) -> None:
        self.run_id = run_id
        super().__init__(message if run_id is None else f"{message} (run {run_id} {outcome})")


class StorageError(CosmosMongoError):
    """The database could not carry out the operation (connection, disk, permissions, time).

    ``reason`` is a short machine-readable cause when one is known: ``"unreachable"`` (no
    server answered), ``"timeout"`` (the operation time limit passed), ``"write_concern"`` (the
    server did not confirm the write as asked), ``"too_large"`` (the answer is over MongoDB's
    16 MB limit for one document: ask for less), ``"damaged"`` (the embedded default's file is
    damaged: nothing damaged was served or changed; ``cosmos-mongo verify`` lists it).
    ``may_have_written`` is True when a write may have been applied although it failed: read it
    back (or run ``verify``) before trying again, or a retry may store it twice.
    """

    def __init__(
        self, message: str, *, reason: str | None = None, may_have_written: bool = False
    ) -> None:
        self.reason = reason
        self.may_have_written = may_have_written
        super().__init__(message)


class ReadOnlyError(StorageError):
    """A write was asked of a store opened read-only (``COSMOS_MONGO_READ_ONLY``); nothing
    was written."""


class InvalidDocumentError(StorageError):
    """A stored document does not fit the data model (edited by hand, or written by another
    program), so it cannot be returned as a model. ``collection``, ``document_id``, ``field``
    and ``rule`` say which document and why; ``cosmos-mongo verify`` lists every such document.
    ``written`` is True when the call's own write was stored before its answer failed."""

    def __init__(
        self, collection: str, document_id: str, field: str, rule: str, *, written: bool = False
    ) -> None:
        self.collection = collection
        self.document_id = document_id
        self.field = field
        self.rule = rule
        self.written = written
        stored = " The change was stored; only its answer could not be read." if written else ""
        super().__init__(
            f"{collection} {document_id} does not fit the data model: {field} {rule}.{stored} "
            "Fix or delete it (e.g. in mongosh); `cosmos-mongo verify` lists every such document."
        )
