"""The cosmos-mongo MCP server: enhance and query tools for LLM agents.

Run it with ``cosmos-mongo-mcp`` (stdio) or ``cosmos-mongo-mcp --transport http``; embed it
with :func:`build_server`. It depends on :mod:`cosmos_mongo` only and holds no query or
enhancement logic of its own.
"""

from mcp_server.server import TOOLS, Operation, build_server
from mcp_server.settings import ServerSettings

__all__ = ["TOOLS", "Operation", "ServerSettings", "build_server"]
