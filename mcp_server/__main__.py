"""``python -m mcp_server``: the same as ``cosmos-mongo-mcp``."""

from mcp_server.launch import main

main()
