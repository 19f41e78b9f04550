"""The integrity races across real processes sharing the embedded default."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from cosmos_mongo import ConflictError, CosmosStore
from cosmos_mongo.embedded import open_embedded

WORKER = Path(__file__).parent / "helpers" / "race_worker.py"
REPO = Path(__file__).parent.parent
TIMEOUT = 120

pytestmark = pytest.mark.slow


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def finish(process: subprocess.Popen[str], stdin: str = "") -> list[str]:
    out, _ = process.communicate(stdin, timeout=TIMEOUT)
    assert process.returncode == 0
    return out.splitlines()


@pytest.mark.parametrize("mode", ["new", "in-place"])
def test_a_delete_in_another_process_during_enhance_leaves_a_true_answer(
    tmp_path: Path, mode: str
) -> None:
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
        worker = start("enhance-waiting", str(tmp_path), prompt.id, mode)
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "waiting"  # its run exists, running
        with pytest.raises(ConflictError, match="force=True"):
            store.delete_prompt(prompt.id)
        store.delete_prompt(prompt.id, force=True)
        outcome = json.loads(finish(worker, "go\n")[-1])
        assert outcome["ok"] is False and outcome["error"] == "ConflictError", outcome
        assert store.list_prompts() == [] and store.list_runs() == []
        assert store.verify(stale_after=timedelta(0)).ok


def test_repair_or_a_new_run_in_another_process_during_enhance_makes_it_fail(
    tmp_path: Path,
) -> None:
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        for action in ("repair", "transfer run"):
            prompt = store.create_prompt(f"A robot arm stacks blocks ({action})", {}, {})
            worker = start("enhance-waiting", str(tmp_path), prompt.id, "in-place")
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "waiting"
            if action == "repair":
                assert store.repair(stale_after=timedelta(0)).rolled_back != []
            else:
                store.create_run(prompt.id, {})
            outcome = json.loads(finish(worker, "go\n")[-1])
            assert outcome["ok"] is False and outcome["error"] == "ConflictError", outcome
            assert store.get_prompt(prompt.id) == prompt  # text unchanged
            assert store.list_runs(status="running") == []
        assert store.verify(stale_after=timedelta(0)).ok


def test_cli_backup_copies_the_store_and_refuses_to_overwrite(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cosmos_mongo.cli import cli

    with open_embedded(tmp_path / "data") as database:
        prompt = CosmosStore(database).create_prompt("A robot arm stacks blocks", {}, {})
        arguments = ["--data-dir", str(tmp_path / "data"), "backup", str(tmp_path / "copy")]
        (tmp_path / "copy").mkdir()
        done = CliRunner().invoke(cli, arguments)
        assert done.exit_code == 0, done.output
        again = CliRunner().invoke(cli, arguments)
        assert again.exit_code == 1 and "exists" in again.output
    with open_embedded(tmp_path / "copy") as copy:
        assert CosmosStore(copy).get_prompt(prompt.id) == prompt


def test_create_run_racing_delete_prompt_in_two_processes_leaves_no_orphan(
    tmp_path: Path,
) -> None:
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        prompts = [store.create_prompt(f"Prompt {i}", {}, {}).id for i in range(60)]
        worker = start("create-runs", str(tmp_path), *prompts)
        for prompt_id in prompts:
            store.delete_prompt(prompt_id)
        attempts = [json.loads(line) for line in finish(worker)]
        assert len(attempts) == len(prompts)
        assert store.list_prompts() == []
        assert store.list_runs(limit=1000) == []  # every run went with, or was taken back
        assert store.verify().ok


def test_quick_repair_alone_settles_deletions_killed_at_any_point(tmp_path: Path) -> None:
    """A process deleting two prompts is killed (SIGKILL) before each of its writes in turn;
    the quick repair, which reads no whole collection, leaves a store the full verify finds
    consistent."""
    deletion_writes = 3  # mark the runs, delete the prompt, delete the runs
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        for k in range(1, 2 * deletion_writes + 1):
            prompts = []
            for i in range(2):
                prompt = store.create_prompt(f"Prompt {k}.{i}", {}, {})
                store.enhance_prompt(prompt.id, enhanced_text=f"Rewrite {k}.{i}.")
                store.create_run(prompt.id, {})
                prompts.append(prompt.id)
            worker = start("delete-prompts", str(tmp_path), str(k), *prompts)
            deleted, _ = worker.communicate(timeout=TIMEOUT)
            assert worker.returncode == -signal.SIGKILL
            assert len(deleted.split()) == (k - 1) // deletion_writes
        interrupted = store.verify(stale_after=timedelta(0), quick=True)
        assert len(interrupted.half_finished) == 2  # killed after marking, twice
        assert len(interrupted.orphan_runs) == 2  # killed after the prompt went, twice
        store.repair(stale_after=timedelta(0), quick=True)
        report = store.verify(stale_after=timedelta(0))
        assert report.ok, report
        assert not any("deletion" in run for run in database["runs"].find({}))


@pytest.mark.parametrize("k", [2, 3])
def test_an_enhancement_killed_between_its_grouped_writes_leaves_nothing(
    tmp_path: Path, k: int
) -> None:
    """On the embedded default an enhancement's writes share one transaction: a process killed
    after its run (k=2) or its new prompt (k=3) was written leaves neither behind."""
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
        worker = start("enhance-dying", str(tmp_path), str(k), prompt.id)
        out, _ = worker.communicate(timeout=TIMEOUT)
        assert worker.returncode == -signal.SIGKILL and out == ""
        assert store.list_prompts() == [prompt] and store.list_runs() == []
        assert store.verify(stale_after=timedelta(0)).ok
