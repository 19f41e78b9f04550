"""Settings of the MCP server, from the environment (prefix ``COSMOS_MCP_``) or flags.

Where the data lives (``COSMOS_MONGO_URI``, ``COSMOS_MONGO_DATABASE``,
``COSMOS_MONGO_DATA_DIR``), how long it is waited for (``COSMOS_MONGO_TIMEOUT_MS``,
``COSMOS_MONGO_OPERATION_TIMEOUT_MS``) and which enhancer runs (``COSMOS_MONGO_ENHANCER*``) are
the library's settings: :class:`cosmos_mongo.config.Settings`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _names(value: object) -> object:
    """``"a, b"`` from the environment becomes ``["a", "b"]``."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ServerSettings(BaseSettings):
    """How the MCP server behaves."""

    model_config = SettingsConfigDict(env_prefix="COSMOS_MCP_", extra="ignore")

    read_only: bool = Field(default=False, description="Register no write tool.")
    disabled_tools: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Tools not to register, by name or by operation type (create, update).",
    )
    max_results: int = Field(default=100, ge=1, le=1000, description="Most items per answer.")
    max_bytes: int = Field(default=1_000_000, ge=10_000, description="Most bytes per answer.")
    max_input_bytes: int = Field(
        default=100_000,
        ge=1_000,
        description="Most bytes of JSON of each free-form argument a write tool takes "
        "(inputs, parameters, execution_config, outputs, metadata).",
    )
    progress_interval: float = Field(
        default=2.0, gt=0, description="Seconds between progress reports while a model works."
    )
    transport: Literal["stdio", "http"] = "stdio"
    host: str = Field(default="127.0.0.1", description="Address the HTTP transport binds.")
    port: int = Field(default=8000, ge=0, le=65535)
    token: SecretStr | None = Field(
        default=None, description="Bearer token HTTP clients must send; required off loopback."
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host headers accepted over HTTP (DNS-rebinding protection): mcp.example:*",
    )

    _split = field_validator("disabled_tools", "allowed_hosts", mode="before")(_names)

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
