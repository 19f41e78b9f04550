"""Settings from the environment (prefix ``COSMOS_MONGO_``), read with pydantic-settings."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_serializer
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from cosmos_mongo.redaction import redact_url

APP_NAME = "cosmos-mongo"


def default_data_dir() -> Path:
    """The platform's per-user data directory, e.g. ``~/.local/share/cosmos-mongo`` on Linux."""
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


class Settings(BaseSettings):
    """Where the data lives. ``uri`` unset means the embedded default in ``data_dir``."""

    model_config = SettingsConfigDict(env_prefix="COSMOS_MONGO_", extra="ignore")

    uri: SecretStr | None = Field(
        default=None,
        description="MongoDB connection string (mongodb:// or mongodb+srv://). Never logged.",
    )
    database: str = Field(default="cosmos", description="Database name.")
    read_only: bool = Field(
        default=False,
        description="Refuse every write; the embedded default is opened read-only and never "
        "created.",
    )
    ensure_indexes: bool = Field(
        default=True,
        description="Create missing indexes when a store is opened; off for users with only "
        "the read role (COSMOS_MONGO_ENSURE_INDEXES=0).",
    )
    timeout_ms: int = Field(
        default=5000,
        ge=100,
        le=600_000,
        description="Milliseconds connect() waits for a MongoDB server to answer (once, when "
        "the store opens; and for each new connection) before it fails with one line naming "
        "the host. Operations are bounded by operation_timeout_ms instead.",
    )
    operation_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        le=3_600_000,
        description="Milliseconds one database operation may take, its wait for a primary "
        "included (pymongo's timeoutMS), so keep it above an election (the default is "
        "pymongo's 30 s server selection). 0: no limit.",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Directory of the embedded default database.",
    )
    enhancer: Literal["auto", "template", "openai"] = Field(
        default="auto",
        description="Which enhancer rewrites prompts; auto = openai if a base URL is set.",
    )
    enhancer_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1. Shown (repr, "
        "model_dump, logs, errors) without its user:password@ or secret query values "
        "(?key=..., &token=...).",
    )
    enhancer_model: str | None = Field(default=None, description="Model name at that endpoint.")
    enhancer_api_key: SecretStr | None = Field(
        default=None, description="Bearer token. Never logged."
    )
    enhancer_timeout: float = Field(default=60.0, gt=0, description="Seconds per HTTP attempt.")
    enhancer_max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries after the first try."
    )
    enhancer_vision: bool | None = Field(
        default=None, description="Send the first video frame; unset = guess from the model name."
    )
    enhancement_timeout: float = Field(
        default=180.0, gt=0, description="Seconds one enhancement may take before it is failed."
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            shown = redact_url(value) if name == "enhancer_base_url" and value else value
            yield name, shown

    @field_serializer("enhancer_base_url")
    def _shown_base_url(self, value: str | None) -> str | None:
        """``model_dump`` shows the URL without its credentials; the attribute keeps them."""
        return None if value is None else redact_url(value)

    def location(self, uri: str | None = None) -> str:
        """Where the data lives, for messages: the hosts of ``uri`` (else the configured one),
        never its credentials or options; else the embedded database's path."""
        if uri is None and self.uri is not None:
            uri = self.uri.get_secret_value()
        if uri is None:
            return f"the embedded database {self.database!r} in {self.data_dir}"
        return f"MongoDB at {mongodb_hosts(uri)} (database {self.database!r})"


def mongodb_hosts(uri: str) -> str:
    """``host:port,...`` of a mongodb:// or mongodb+srv:// string, without credentials."""
    rest = uri.split("://", 1)[-1]
    hosts = rest.split("/", 1)[0].split("?", 1)[0]
    return hosts.rsplit("@", 1)[-1] or "an unnamed host"


def settings_problem(
    exc: ValidationError | SettingsError, prefixes: Mapping[str, str] | None = None
) -> str:
    """One line naming each bad environment variable and its rule (never its value: it may be
    a token or a connection string). ``prefixes`` maps a settings class's name to its
    variables' prefix (default: this module's ``Settings`` and ``COSMOS_MONGO_``)."""
    if isinstance(exc, SettingsError):
        return f"bad setting: {str(exc).splitlines()[0]}"
    known = {"Settings": "COSMOS_MONGO_"} if prefixes is None else prefixes
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = f"{known.get(exc.title, '')}{field.upper()}" if field else exc.title
        problems.append(f"{name}: {error['msg'][:1].lower()}{error['msg'][1:]}")
    return "bad setting " + "; ".join(problems)
