"""The agent's whole job (issue 24, gaps): `confirm: true` never stands in for a user the
client can ask, runs are recorded and moved through their statuses, prompts are edited, stuck
work is repaired, lists page by an opaque cursor that inserts cannot shift, and completions
match names."""

from __future__ import annotations

import pytest

from tests.mcp.conftest import Harness
from tests.mcp.test_agent_interface import answering, harmful_calls
from tests.mcp.test_tools import error

pytestmark = pytest.mark.anyio


# -- confirmation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_confirm_true_still_asks_a_user_the_client_can_ask(
    harness: Harness, mode: str
) -> None:
    calls = await harmful_calls(harness)
    before = harness.snapshot()
    no = answering("decline")
    async with harness.connect(client_options={"elicitation_callback": no, "mode": mode}) as s:
        for tool, arguments, _ in calls:
            text = await error(s, tool, **arguments, confirm=True)
            assert "did not confirm" in text and "Nothing was changed" in text
    assert harness.snapshot() == before and len(no.asked) == len(calls)
