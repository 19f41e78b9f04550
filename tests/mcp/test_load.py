"""A short load test in the suite: concurrent HTTP clients, no errors, no lost writes."""

from __future__ import annotations

import pytest

from benchmarks.load_test import run_load

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_concurrent_clients_mixing_reads_and_enhancements_lose_nothing() -> None:
    result = await run_load(clients=4, seconds=3.0, prompts=20)
    assert result.errors == []
    assert result.calls > 20 and result.enhancements
    assert result.lost_writes == 0 and result.unexpected_runs == 0  # completed runs = successes
