"""``cosmos-mongo-mcp``: start the server, or say in one line what to install."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from mcp_server.cli import main as serve
    except ModuleNotFoundError as exc:
        from mcp_server import INSTALL_HINT

        if exc.name is not None and exc.name.split(".")[0] in {"mcp", "mcp_types", "starlette"}:
            sys.exit(f"cosmos-mongo-mcp: {INSTALL_HINT}")
        raise
    serve(prog_name="cosmos-mongo-mcp")
