"""``python -m mcp_server``: the same as ``cosmos-mongo-mcp``."""

from mcp_server.cli import main

main(prog_name="cosmos-mongo-mcp")
