"""A bad environment value stops ``cosmos-mongo-mcp`` with one line naming the variable and
exit status 2: no traceback, and never the value (it may be a token)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mcp_server.cli import main


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("COSMOS_MCP_MAX_BYTES", "lots-secret", "valid integer"),
        ("COSMOS_MCP_PORT", "99999999", "less than or equal to 65535"),
        ("COSMOS_MONGO_TIMEOUT_MS", "soon-secret", "valid integer"),
    ],
)
def test_a_bad_environment_value_is_one_line_and_exit_status_2(
    variable: str, value: str, rule: str
) -> None:
    result = CliRunner().invoke(main, [], env={variable: value})
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"cosmos-mongo-mcp: bad setting {variable}: ")
    assert rule in result.stderr and value not in result.stderr
