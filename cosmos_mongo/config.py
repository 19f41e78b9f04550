"""Settings from the environment (prefix ``COSMOS_MONGO_``), read with pydantic-settings."""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Directory of the embedded default database.",
    )
