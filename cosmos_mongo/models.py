"""Pydantic models for stored documents and operation results.

Documents map to models through :meth:`Prompt.from_document` / :meth:`Run.from_document`; the
document ``_id`` becomes ``id``. Readers are lenient (older documents may lack ``updated_at``
or ``metadata``, and naive datetimes are read as UTC); writers are strict (see
:mod:`cosmos_mongo.validation`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cosmos_mongo.validation import PROMPT_ID_PREFIX, RUN_ID_PREFIX


def utc_now() -> datetime:
    """The current time as an aware UTC datetime at BSON's millisecond precision."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_utc(value: datetime) -> datetime:
    """Treat a naive datetime as UTC (pymongo's default) and convert aware ones to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def new_prompt_id() -> str:
    return PROMPT_ID_PREFIX + uuid.uuid4().hex


def new_run_id() -> str:
    return RUN_ID_PREFIX + uuid.uuid4().hex


class _Document(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    id: str = Field(alias="_id")

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Self:
        return cls.model_validate(dict(document))

    def to_document(self) -> dict[str, Any]:
        """The document as stored: ``_id`` instead of ``id``, datetimes as aware UTC."""
        return self.model_dump(by_alias=True, exclude_none=True)

    @field_validator("created_at", "updated_at", "started_at", "completed_at", check_fields=False)
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)


class Prompt(_Document):
    """A Cosmos prompt: the text, its input files and its generation parameters."""

    prompt_text: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime | None = None

    @property
    def name(self) -> str | None:
        name = self.parameters.get("name")
        return name if isinstance(name, str) else None

    @property
    def enhanced(self) -> bool:
        return self.parameters.get("enhanced") is True


class Run(_Document):
    """One execution of a prompt by a model (transfer, enhance, upscale, predict, reason)."""

    prompt_id: str
    model_type: str
    status: str
    execution_config: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error_message: str | None = None
    log_path: str | None = None
    rating: int | None = None

    @field_validator("execution_config", "outputs", "metadata", mode="before")
    @classmethod
    def _none_as_empty(cls, value: Any) -> Any:
        return {} if value is None else value


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


class DeletionResult(BaseModel):
    """What :meth:`CosmosStore.delete_prompt` removed."""

    model_config = ConfigDict(frozen=True)

    prompt_id: str
    deleted_runs: int
