"""Watching prompts and runs: a look reports what changed since the previous one, whoever
wrote it, and on the embedded default a look after no commit reads no document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cosmos_mongo import CosmosStore
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.watching import ChangeWatch


def test_a_look_reports_each_watched_document_that_another_writer_changed(store: Any) -> None:
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    run = store.create_run(prompt.id, {})
    other = store.create_prompt("A drone over a field", {}, {})
    watch = ChangeWatch()
    watch.add("prompt", prompt.id)
    watch.add("run", run.id)
    assert store.poll_changes(watch) == []  # the first look only records
    store.update_run_status(run.id, "completed")
    store.update_prompt(other.id, prompt_text="A drone over a wheat field")
    assert store.poll_changes(watch) == [("run", run.id)]
    assert store.poll_changes(watch) == []
    store.delete_prompt(prompt.id, force=True)
    assert sorted(store.poll_changes(watch)) == [("prompt", prompt.id), ("run", run.id)]
    watch.discard("run", run.id)
    assert watch.watched == frozenset({("prompt", prompt.id)})


def test_on_the_embedded_default_another_connections_commit_is_seen_and_no_commit_reads_nothing(
    tmp_path: Path,
) -> None:
    with open_embedded(tmp_path) as mine, open_embedded(tmp_path) as theirs:
        watcher, writer = CosmosStore(mine), CosmosStore(theirs)
        prompt = writer.create_prompt("A robot arm stacks blocks", {}, {})
        run = writer.create_run(prompt.id, {})
        watch = ChangeWatch()
        watch.add("run", run.id)
        assert watcher.poll_changes(watch) == []
        reads = mine.engine.stats.documents_decoded
        assert watcher.poll_changes(watch) == []
        assert mine.engine.stats.documents_decoded == reads  # the stamp alone answered
        writer.update_run_status(run.id, "completed")
        assert watcher.poll_changes(watch) == [("run", run.id)]
