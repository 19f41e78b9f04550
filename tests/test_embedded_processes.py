"""The embedded default across real processes: durability, sharing, and cost per write."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cosmos_mongo import CosmosStore
from cosmos_mongo.embedded import open_embedded

WORKER = Path(__file__).parent / "helpers" / "embedded_worker.py"
REPO = Path(__file__).parent.parent
TIMEOUT = 120.0

pytestmark = pytest.mark.slow


class Worker:
    """A worker subprocess whose stdout lines arrive through a queue, read with timeouts."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self) -> str:
        line = self.lines.get(timeout=TIMEOUT)
        if line is None:
            raise AssertionError(f"worker exited early with {self.process.wait(TIMEOUT)}")
        return line

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(TIMEOUT)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        while self.lines.get(timeout=TIMEOUT) is not None:  # let the reader thread drain
            pass
        self.process.stdout.close()


def test_a_write_that_returned_survives_kill_9(tmp_path: Path) -> None:
    worker = Worker("write-forever", str(tmp_path))
    try:
        acknowledged = [worker.next_line() for _ in range(150)]
        os.kill(worker.process.pid, signal.SIGKILL)
        assert worker.process.wait(TIMEOUT) == -signal.SIGKILL
    finally:
        worker.finish()
    with CosmosStore(open_embedded(tmp_path)) as store:
        missing = [prompt_id for prompt_id in acknowledged if store.get_prompt(prompt_id) is None]
        store.db.close()
    assert missing == []


def test_two_processes_writing_at_once_lose_nothing_and_see_each_other(tmp_path: Path) -> None:
    database = open_embedded(tmp_path)
    CosmosStore(database).ensure_indexes()
    database.close()
    workers = [Worker("write-then-count", str(tmp_path), "200", tag) for tag in ("a", "b")]
    try:
        for worker in workers:
            assert worker.next_line() == "written"
        for worker in workers:
            worker.send("count")
        reports = [json.loads(worker.next_line()) for worker in workers]
    finally:
        for worker in workers:
            worker.finish()
    for report in reports:
        assert report["count"] == 400
        assert report["writers"] == ["a", "b"]
        # Nothing is loaded at open: the listing decoded the documents it returned, no more.
        assert report["documents_decoded"] <= 400
    database = open_embedded(tmp_path)
    assert len(CosmosStore(database).list_prompts(limit=1000)) == 400
    database.close()


def test_a_write_costs_the_same_in_a_small_and_a_large_collection(tmp_path: Path) -> None:
    worker = Worker("write-cost", str(tmp_path))
    try:
        report = json.loads(worker.next_line())
    finally:
        worker.finish()
    small, large = report["costs"]["100"], report["costs"]["3000"]
    page = 4096 + 24  # a WAL frame
    # A write appends a few pages to the WAL, never the whole file: ~1 MB here.
    assert large <= small + 2 * page
    assert large < 12 * page < report["file_bytes"] / 20


def test_compaction_while_another_process_writes_loses_nothing(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        store.ensure_indexes()
        seeded = [store.create_prompt(f"seeded prompt {i}", {}, {}).id for i in range(300)]
    worker = Worker("write-forever", str(tmp_path))
    try:
        acknowledged = [worker.next_line() for _ in range(20)]
        with open_embedded(tmp_path) as database:
            store = CosmosStore(database)
            for prompt_id in seeded[:150]:
                store.delete_prompt(prompt_id)
        env = {**os.environ, "PYTHONPATH": str(REPO), "COSMOS_MONGO_DATA_DIR": str(tmp_path)}
        compacted = subprocess.run(
            [sys.executable, "-m", "cosmos_mongo.cli", "compact", "--json"],
            env={k: v for k, v in env.items() if k != "COSMOS_MONGO_URI"},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert compacted.returncode == 0, compacted.stderr
        sizes = json.loads(compacted.stdout)
        assert sizes["bytes_after"] < sizes["bytes_before"], sizes
        acknowledged += [worker.next_line() for _ in range(20)]  # it kept writing
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(TIMEOUT)
    finally:
        worker.finish()
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        assert all(store.get_prompt(prompt_id) for prompt_id in acknowledged + seeded[150:])
        assert not any(store.get_prompt(prompt_id) for prompt_id in seeded[:150])
        assert store.verify().ok
