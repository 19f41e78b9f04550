"""Reading explain() output (tests/realserver): every stage of a winning plan."""

from __future__ import annotations

from typing import Any


def plan_stages(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every stage of a winning plan: classic (inputStage/inputStages), SBE (queryPlan) and
    sharded (shards[].winningPlan) shapes."""
    found = [plan]
    for key in ("inputStage", "queryPlan", "winningPlan"):
        if isinstance(plan.get(key), dict):
            found += plan_stages(plan[key])
    for key in ("inputStages", "shards"):
        for child in plan.get(key, []):
            found += plan_stages(child)
    return found
