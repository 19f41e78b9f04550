"""The MCP server for cosmos-mongo (built in a later issue)."""
