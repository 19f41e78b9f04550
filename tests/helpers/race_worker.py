"""A separate process racing another over one embedded store (tests/test_integrity_processes.py).

enhance-waiting DIR PROMPT_ID MODE   enhance PROMPT_ID with an enhancer that prints "waiting"
                                     and blocks until a line on stdin; then print the outcome
                                     as JSON. MODE: new, in-place, or forced (in place with
                                     force_overwrite=True and a text naming this process)
create-runs DIR PROMPT_ID...         create a run of each prompt in turn, print one JSON line
                                     per attempt: {"prompt": ..., "run": id or null}
delete-prompts DIR K PROMPT_ID...    delete each prompt in turn, printing its id once deleted;
                                     the process kills itself (SIGKILL) just before its K-th
                                     write
enhance-dying DIR K PROMPT_ID        enhance PROMPT_ID with agent text, its writes grouped in
                                     one transaction as on the embedded default; the process
                                     kills itself (SIGKILL) just before its K-th write
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cosmos_mongo import CosmosMongoError, CosmosStore
from cosmos_mongo.embedded import open_embedded
from tests.helpers.writes import WRITE_METHODS


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


class DyingDatabase:
    """The database, except that the process dies (SIGKILL, no clean-up) before write ``k``."""

    def __init__(self, database: Any, k: int) -> None:
        self.database, self.k, self.writes = database, k, 0

    def __getitem__(self, name: str) -> Any:
        collection, owner = self.database[name], self

        class Collection:
            def __getattr__(self, method: str) -> Any:
                if method in WRITE_METHODS:
                    owner.writes += 1
                    if owner.writes == owner.k:
                        os.kill(os.getpid(), signal.SIGKILL)
                return getattr(collection, method)

        return Collection()


class DyingGroupedDatabase(DyingDatabase):
    """The same, keeping the embedded default's ``unit_of_work``: the drivers still group the
    writes, so the kill lands inside an open transaction."""

    def unit_of_work(self) -> Any:
        return self.database.unit_of_work()


def enhance_dying(data_dir: Path, k: int, prompt_id: str) -> None:
    store = CosmosStore(DyingGroupedDatabase(open_embedded(data_dir), k))
    store.enhance_prompt(prompt_id, enhanced_text="A detailed rewrite that never lands.")
    print("enhanced", flush=True)


def delete_prompts(data_dir: Path, k: int, prompt_ids: list[str]) -> None:
    store = CosmosStore(DyingDatabase(open_embedded(data_dir), k))
    for prompt_id in prompt_ids:
        store.delete_prompt(prompt_id)
        print(prompt_id, flush=True)


if __name__ == "__main__":
    command, directory, *rest = sys.argv[1:]
    if command == "enhance-waiting":
        enhance_waiting(Path(directory), rest[0], rest[1])
    elif command == "create-runs":
        create_runs(Path(directory), rest)
    elif command == "enhance-dying":
        enhance_dying(Path(directory), int(rest[0]), rest[1])
    elif command == "delete-prompts":
        delete_prompts(Path(directory), int(rest[0]), rest[1:])
    else:
        raise SystemExit(f"unknown command {command!r}")
