"""A separate process racing another over one embedded store (tests/test_integrity_processes.py).

enhance-waiting DIR PROMPT_ID MODE   enhance PROMPT_ID with an enhancer that prints "waiting"
                                     and blocks until a line on stdin; then print the outcome
                                     as JSON. MODE: new, in-place, or forced (in place with
                                     force_overwrite=True and a text naming this process)
create-runs DIR PROMPT_ID...         create a run of each prompt in turn, print one JSON line
                                     per attempt: {"prompt": ..., "run": id or null}
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cosmos_mongo import CosmosMongoError, CosmosStore
from cosmos_mongo.embedded import open_embedded


class WaitingEnhancer:
    model = "waiting-llm"

    def __init__(
        self, text: str = "A robot arm stacks three wooden blocks, in warm light."
    ) -> None:
        self.text = text

    def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        print("waiting", flush=True)
        sys.stdin.readline()
        return self.text

    async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        return self.enhance(prompt_text, inputs)


def enhance_waiting(data_dir: Path, prompt_id: str, mode: str) -> None:
    if mode == "forced":
        enhancer = WaitingEnhancer(f"A rewrite by process {os.getpid()}.")
    else:
        enhancer = WaitingEnhancer()
    store = CosmosStore(open_embedded(data_dir), enhancer=enhancer)
    try:
        result = store.enhance_prompt(
            prompt_id, create_new=mode == "new", force_overwrite=mode == "forced"
        )
        outcome = {"ok": True, "run_id": result.run_id, "prompt_id": result.enhanced_prompt_id}
    except CosmosMongoError as exc:
        outcome = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(outcome), flush=True)


def create_runs(data_dir: Path, prompt_ids: list[str]) -> None:
    store = CosmosStore(open_embedded(data_dir))
    for prompt_id in prompt_ids:
        try:
            run: str | None = store.create_run(prompt_id, {}).id
        except CosmosMongoError:
            run = None
        print(json.dumps({"prompt": prompt_id, "run": run}), flush=True)


if __name__ == "__main__":
    command, directory, *rest = sys.argv[1:]
    if command == "enhance-waiting":
        enhance_waiting(Path(directory), rest[0], rest[1])
    elif command == "create-runs":
        create_runs(Path(directory), rest)
    else:
        raise SystemExit(f"unknown command {command!r}")
