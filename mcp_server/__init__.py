"""The cosmos-mongo MCP server: enhance and query tools for LLM agents.

Run it with ``cosmos-mongo-mcp`` (stdio) or ``cosmos-mongo-mcp --transport http``; embed it
with :func:`build_server`. It depends on :mod:`cosmos_mongo` only and holds no query or
enhancement logic of its own. It needs the ``mcp`` extra: ``pip install 'cosmos-mongo[mcp]'``.
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = (
    "the cosmos-mongo MCP server needs the MCP SDK: pip install 'cosmos-mongo[mcp]' "
    "(from a clone: .venv/bin/pip install -e '.[mcp]')"
)

__all__ = ["TOOLS", "Operation", "ServerSettings", "build_server"]


def __getattr__(name: str) -> Any:
    """The exports, imported on first use, so the package itself imports without the SDK."""
    if name not in __all__:
        raise AttributeError(f"module 'mcp_server' has no attribute {name!r}")
    try:
        from mcp_server import server, settings
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] in {"mcp", "mcp_types", "starlette"}:
            raise ModuleNotFoundError(INSTALL_HINT, name=exc.name) from exc
        raise
    return settings.ServerSettings if name == "ServerSettings" else getattr(server, name)
