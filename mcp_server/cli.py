"""``cosmos-mongo-mcp``: run the MCP server over stdio (default) or streamable HTTP.

The connection string comes only from ``--uri`` or ``COSMOS_MONGO_URI`` and is never logged.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import ValidationError
from pydantic_settings import SettingsError

from cosmos_mongo.config import Settings, settings_problem
from mcp_server.server import TOOLS, Operation, build_server
from mcp_server.settings import ServerSettings

_WILDCARDS = {"0.0.0.0", "::", ""}


def _transport_security(settings: ServerSettings) -> TransportSecuritySettings | None:
    """DNS-rebinding protection: automatic on loopback, from allowed hosts elsewhere."""
    if settings.loopback:
        return None  # the SDK allows only 127.0.0.1/localhost/[::1] Host headers
    hosts = settings.allowed_hosts or [f"{settings.host}:*"]
    origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def check_http(settings: ServerSettings) -> str | None:
    """Why the HTTP transport must not start with these settings, or None."""
    if settings.token is not None and not settings.token.get_secret_value().strip():
        # An empty token would let the SDK demand a token nobody can send: refuse, say why.
        return "COSMOS_MCP_TOKEN is set but empty: set a token, or unset it (loopback only)"
    if settings.loopback:
        return None
    if settings.token is None:
        return (
            f"refusing to bind {settings.host}: set COSMOS_MCP_TOKEN so clients must send a "
            "bearer token (only 127.0.0.1/localhost may run without one)"
        )
    if settings.host in _WILDCARDS and not settings.allowed_hosts:
        return (
            f"binding {settings.host!r} accepts any Host header: set COSMOS_MCP_ALLOWED_HOSTS to "
            "the names clients use (e.g. mcp.example.com:*) for DNS-rebinding protection"
        )
    return None


_PREFIXES = {"ServerSettings": "COSMOS_MCP_", "Settings": "COSMOS_MONGO_"}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--transport", type=click.Choice(["stdio", "http"]), help="Default: stdio.")
@click.option("--host", help="HTTP address to bind (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="HTTP port (default 8000).")
@click.option("--read-only", is_flag=True, default=None, help="Register no write tool.")
@click.option(
    "--disable-tool",
    "disabled",
    multiple=True,
    type=click.Choice(
        sorted([*TOOLS, *(op.value for op in Operation if op is not Operation.READ)])
    ),
    help="Do not register this tool, or every tool of this operation type. Repeatable.",
)
@click.option("--uri", help="MongoDB connection string (default: COSMOS_MONGO_URI, else embedded).")
@click.option("--db", "database", help="Database name (default: COSMOS_MONGO_DATABASE or cosmos).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Embedded database directory (default: COSMOS_MONGO_DATA_DIR or the user data dir).",
)
@click.option(
    "--no-ensure-indexes",
    "skip_indexes",
    is_flag=True,
    help="Create no index (users with only the read role; --read-only implies it).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log requests to stderr.")
def main(
    transport: str | None,
    host: str | None,
    port: int | None,
    read_only: bool | None,
    disabled: tuple[str, ...],
    uri: str | None,
    database: str | None,
    data_dir: Path | None,
    skip_indexes: bool,
    verbose: bool,
) -> None:
    """Serve cosmos-mongo to LLM agents over the Model Context Protocol."""
    overrides: dict[str, Any] = {
        "transport": transport,
        "host": host,
        "port": port,
        "read_only": read_only,
    }
    library: dict[str, Any] = {"uri": uri, "database": database, "data_dir": data_dir}
    if skip_indexes:
        library["ensure_indexes"] = False
    try:
        settings = ServerSettings.model_validate(
            {k: v for k, v in overrides.items() if v is not None}
        )
        library_settings = Settings.model_validate(
            {k: v for k, v in library.items() if v is not None}
        )
    except (ValidationError, SettingsError) as exc:
        click.echo(f"cosmos-mongo-mcp: {settings_problem(exc, _PREFIXES)}", err=True)
        sys.exit(2)
    if disabled:
        settings = settings.model_copy(
            update={"disabled_tools": [*settings.disabled_tools, *disabled]}
        )
    # Logs go to stderr: on stdio, stdout carries the protocol.
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if verbose else logging.WARNING)
    server = build_server(settings, library_settings=library_settings)
    if settings.transport == "stdio":
        server.run()
        return
    problem = check_http(settings)
    if problem is not None:
        raise click.UsageError(problem)
    click.echo(
        f"cosmos-mongo MCP server on http://{settings.host}:{settings.port}/mcp "
        f"(health: /health, token {'required' if settings.token else 'not required'})",
        err=True,
    )
    server.run(
        transport="streamable-http",
        host=settings.host,
        port=settings.port,
        transport_security=_transport_security(settings),
    )
