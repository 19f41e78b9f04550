"""How many examples a randomized test runs: a share of the active hypothesis profile's."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def examples(share: float) -> int:
    """``share`` times the active profile's ``max_examples``: 100 by default, fewer under
    hypothesis' "ci" profile as tests/conftest.py registers it (where ``CI`` is set), so CI
    keeps to its time. At least 5.
    """
    return max(5, round(settings().max_examples * share))


def randomized(share: float) -> settings:
    """The settings of a randomized test that builds a store per example: ``examples(share)``
    examples, no deadline (the disk decides), a function-scoped fixture allowed (a new
    directory from ``tmp_path_factory`` per example)."""
    return settings(
        max_examples=examples(share),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
