"""Integrity at the edges: answers agree with the store under ties, races, deletion and misuse.

Each race is injected deterministically: a slow enhancer that does another writer's work while
the enhancement waits on it, or a fault hook on the counting proxy that runs a competing call
just before one of the workflow's writes. The multi-process versions live in
``test_integrity_processes.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cosmos_mongo import ConflictError, CosmosStore, PromptNotFoundError
from cosmos_mongo import enhancement as enhancement_module
from cosmos_mongo import legacy as legacy_module
from cosmos_mongo import workflows as workflows_module
from cosmos_mongo.models import new_prompt_id, new_run_id
from tests.conftest import Backend
from tests.test_contract import CountingDatabase
from tests.test_enhancement import store_on

NOW = timedelta(0)
ID_PATTERN = re.compile(r"(ps|rs)_[0-9a-f]{32}")


# -- order: time-ordered ids, ties broken by _id ----------------------------------------------


def test_new_ids_are_time_ordered_and_strictly_increasing() -> None:
    ids = [new_run_id() for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(ID_PATTERN.fullmatch(i) for i in ids)
    millis = int(new_prompt_id()[3:15], 16)
    assert abs(millis - datetime.now(UTC).timestamp() * 1000) < 60_000


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """Every write in the same millisecond: only ``_id`` can order them."""
    instant = datetime(2026, 11, 24, 12, 0, 0, 123000, tzinfo=UTC)
    for module in (workflows_module, enhancement_module, legacy_module):
        monkeypatch.setattr(module, "utc_now", lambda: instant)
    return instant


def test_writes_in_one_millisecond_come_back_newest_first(
    backend: Backend, frozen_clock: datetime
) -> None:
    store = backend.store
    prompts = [store.create_prompt(f"Prompt number {i}", {}, {}) for i in range(5)]
    assert [p.id for p in store.list_prompts()] == [p.id for p in reversed(prompts)]
    target = prompts[0].id
    runs = [
        store.enhance_prompt(target, create_new=False, enhanced_text=f"Rewrite {i}.")
        for i in range(4)
    ]
    history = store.get_enhancement_history(target)
    assert [run.id for run in history] == [r.run_id for r in reversed(runs)]
    details = store.get_enhancement_details(target)
    assert details.run_id == runs[-1].run_id
    # skip paging over ties is stable: the pages partition the listing
    pages = [store.list_prompts(limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [p.id for page in pages for p in page] == [p.id for p in reversed(prompts)]
    transfers = [store.create_run(target, {}) for _ in range(3)]
    assert [r.id for r in store.list_runs(model_type="transfer")] == [
        r.id for r in reversed(transfers)
    ]


def test_history_is_newest_first_200_times_in_a_row(mock_store: CosmosStore) -> None:
    for _ in range(200):
        prompt = mock_store.create_prompt("A robot arm stacks blocks", {}, {})
        first = mock_store.enhance_prompt(prompt.id, enhanced_text="First rewrite.")
        second = mock_store.enhance_prompt(
            prompt.id, create_new=False, enhanced_text="Second rewrite."
        )
        history = mock_store.get_enhancement_history(prompt.id)
        assert [run.id for run in history] == [second.run_id, first.run_id]


# -- races, injected deterministically --------------------------------------------------------


class Meddling:
    """An enhancer that lets another writer act while the enhancement waits on it."""

    model = "meddling-llm"

    def __init__(self, action: Callable[[], Any]) -> None:
        self.action = action
        self.error: BaseException | None = None

    def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        try:
            self.action()
        except BaseException as exc:  # reported to the test, not to the workflow
            self.error = exc
        return "A robot arm stacks three wooden blocks, slowly, in warm light."

    async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        return self.enhance(prompt_text, inputs)


def other_writer(backend: Backend) -> CosmosStore:
    """A second, synchronous store over the same data: the writer that races the call."""
    return CosmosStore(backend.raw)


def assert_consistent(backend: Backend) -> None:
    report = other_writer(backend).verify(stale_after=NOW)
    assert report.ok, report


@pytest.mark.parametrize("create_new", [True, False])
def test_delete_during_enhance_refuses_without_force(backend: Backend, create_new: bool) -> None:
    side = other_writer(backend)
    prompt = backend.store.create_prompt("A robot arm stacks blocks", {}, {})
    enhancer = Meddling(lambda: side.delete_prompt(prompt.id))
    result = store_on(backend, enhancer).enhance_prompt(prompt.id, create_new=create_new)
    assert isinstance(enhancer.error, ConflictError)
    assert enhancer.error.run_ids == [result.run_id] and "force=True" in str(enhancer.error)
    assert backend.store.get_run(result.run_id).status == "completed"
    assert_consistent(backend)


@pytest.mark.parametrize("create_new", [True, False])
def test_forced_delete_during_enhance_makes_the_enhancement_fail_cleanly(
    backend: Backend, create_new: bool
) -> None:
    side = other_writer(backend)
    prompt = backend.store.create_prompt("A robot arm stacks blocks", {}, {})
    enhancer = Meddling(lambda: side.delete_prompt(prompt.id, force=True))
    with pytest.raises(ConflictError, match="deleted") as caught:
        store_on(backend, enhancer).enhance_prompt(prompt.id, create_new=create_new)
    assert enhancer.error is None
    assert "marked failed" not in str(caught.value)
    assert backend.snapshot() == {"prompts": [], "runs": []}  # no orphan prompt, no run


def test_repair_during_a_live_enhancement_makes_the_call_fail(backend: Backend) -> None:
    side = other_writer(backend)
    prompt = backend.store.create_prompt("A robot arm stacks blocks", {}, {})
    enhancer = Meddling(lambda: side.repair(stale_after=NOW))
    prompts_before = backend.snapshot()["prompts"]
    with pytest.raises(ConflictError, match="settled") as caught:
        store_on(backend, enhancer).enhance_prompt(prompt.id, create_new=False)
    run = backend.store.get_run(caught.value.run_id)
    assert run.status == "failed" and "rolled back by repair" in run.error_message
    assert backend.snapshot()["prompts"] == prompts_before
    assert_consistent(backend)


def test_a_run_created_during_an_in_place_enhancement_stops_the_overwrite(
    backend: Backend,
) -> None:
    side = other_writer(backend)
    prompt = backend.store.create_prompt("A robot arm stacks blocks", {}, {})
    transfer: list[Any] = []
    enhancer = Meddling(lambda: transfer.append(side.create_run(prompt.id, {})))
    with pytest.raises(ConflictError, match="force_overwrite=True") as caught:
        store_on(backend, enhancer).enhance_prompt(prompt.id, create_new=False)
    assert transfer[0].id in caught.value.run_ids
    assert backend.store.get_prompt(prompt.id).prompt_text == "A robot arm stacks blocks"
    enhance_run = backend.store.get_enhancement_history(prompt.id)[0]
    assert enhance_run.status == "failed" and "refused" in enhance_run.error_message
    assert_consistent(backend)


class Interleaving(CountingDatabase):
    """Runs ``action`` once, just before the workflow's call of ``method`` on ``collection``."""

    def __init__(self, database: Any, collection: str, method: str, action: Callable[[], Any]):
        super().__init__(database)
        self.trigger, self.action = (collection, method), action
        self.fired = False

    def call(self, name: str, method: str, target: Any, args: Any, kwargs: Any) -> Any:
        if (name, method) == self.trigger and not self.fired:
            self.fired = True
            self.action()
        return super().call(name, method, target, args, kwargs)


SYNC_BACKENDS = ["mongomock", "embedded"]


@pytest.fixture(params=SYNC_BACKENDS)
def sync_backend(request: pytest.FixtureRequest, tmp_path: Any, runner: Any) -> Any:
    from tests.conftest import _open_backend

    yield from _open_backend(request.param, tmp_path, runner, request)


def test_create_run_during_delete_prompt_leaves_no_orphan(sync_backend: Backend) -> None:
    store = sync_backend.store
    # create_run's insert lands between the prompt's deletion and the runs' deletion
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    attempts: list[BaseException] = []

    def create() -> None:
        try:
            store.create_run(prompt.id, {})
        except PromptNotFoundError as exc:
            attempts.append(exc)

    racing = CosmosStore(Interleaving(sync_backend.raw, "runs", "delete_many", create))
    racing.delete_prompt(prompt.id)
    assert len(attempts) == 1
    # delete_prompt runs between create_run's check and its insert
    other = store.create_prompt("Another prompt", {}, {})
    racing = CosmosStore(
        Interleaving(sync_backend.raw, "runs", "insert_one", lambda: store.delete_prompt(other.id))
    )
    with pytest.raises(PromptNotFoundError):
        racing.create_run(other.id, {})
    assert sync_backend.snapshot() == {"prompts": [], "runs": []}
    assert_consistent(sync_backend)


def test_repair_finishing_the_same_enhancement_leaves_a_true_answer(
    sync_backend: Backend,
) -> None:
    store = sync_backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    for create_new, method in ((True, "insert_one"), (False, "update_one")):
        racing = CosmosStore(
            Interleaving(sync_backend.raw, "prompts", method, lambda: store.repair(stale_after=NOW))
        )
        result = racing.enhance_prompt(
            prompt.id, create_new=create_new, force_overwrite=True, enhanced_text="Agent text."
        )
        run = store.get_run(result.run_id)
        assert run.status == "completed" and run.outputs["enhanced_text"] == "Agent text."
        assert store.get_prompt(result.enhanced_prompt_id).prompt_text == "Agent text."
    assert_consistent(sync_backend)


def test_deleting_the_run_midway_undoes_the_prompt_write(sync_backend: Backend) -> None:
    store = sync_backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    for create_new in (True, False):
        before = sync_backend.snapshot()

        def delete_the_run() -> None:
            running = store.list_runs(model_type="enhance", status="running")
            store.delete_run(running[0].id)

        racing = CosmosStore(Interleaving(sync_backend.raw, "runs", "update_one", delete_the_run))
        with pytest.raises(ConflictError, match="prompt write was undone"):
            racing.enhance_prompt(prompt.id, create_new=create_new, enhanced_text="Agent text.")
        assert without_updated_at(sync_backend.snapshot()) == without_updated_at(before)


def without_updated_at(snapshot: dict[str, list[dict[str, Any]]]) -> Any:
    """A restored prompt is as it was, but for the time of the restoring write."""
    return {
        name: [{k: v for k, v in doc.items() if k != "updated_at"} for doc in docs]
        for name, docs in snapshot.items()
    }


# -- legacy data answers the same before and after migrate ------------------------------------


def insert_plan_shape(raw: Any) -> dict[str, str]:
    """The plan's exact legacy shape: runs that lack the model name (no outputs model, no
    execution_config model) while the prompts still carry ``enhancement_model``."""
    from tests.integration.legacy_data import insert_legacy, pid, prompt, rid, run

    ids = insert_legacy(raw)
    raw["prompts"].insert_one(
        prompt(
            20,
            "A crane lifts steel beams over a busy construction site at dawn",
            70,
            name="crane",
            enhanced=True,
            enhancement_model="pixtral-legacy",
            enhanced_at="2024-01-01T13:10:00Z",
            last_enhancement_run_id=rid(20),
        )
    )
    legacy_run = run(
        20,
        pid(20),
        69,
        {
            "enhanced_text": "A crane lifts steel beams over a busy construction site at dawn",
            "original_prompt_id": pid(20),
            "enhanced_prompt_id": pid(20),
        },
        "unused",
    )
    legacy_run["execution_config"] = {}
    raw["runs"].insert_one(legacy_run)
    return {**ids, "G": pid(20)}


def every_answer(store: Any, ids: dict[str, str]) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for name, prompt_id in sorted(ids.items()):
        details = store.get_enhancement_details(prompt_id)
        original = store.get_original_prompt(prompt_id)
        lineage = store.get_lineage(prompt_id)
        answers[name] = {
            "details": None
            if details is None
            else details.model_dump(exclude={"run_id"} if details.run_id is None else set()),
            "original": None if original is None else original.id,
            "history": [run.id for run in store.get_enhancement_history(prompt_id)],
            "ancestors": [(e.parent_id, e.child_id) for e in lineage.ancestors],
            "descendants": [(e.parent_id, e.child_id) for e in lineage.descendants],
        }
    answers["enhanced"] = [p.id for p in store.list_enhanced_prompts()]
    return answers


def test_legacy_data_answers_the_same_before_and_after_migrate(backend: Backend) -> None:
    ids = insert_plan_shape(backend.raw)
    store = backend.store
    g = store.get_enhancement_details(ids["G"])
    assert g.enhancement_model == "pixtral-legacy"  # the run lacks it; the prompt's key knows
    before = every_answer(store, ids)
    store.migrate(dry_run=False)
    after = every_answer(store, ids)
    # Run-less legacy prompts gain a run (and so a run id, and a history entry for them and
    # for D's parent E): that is all.
    for name in ("D", "E", "F"):
        for answers in (before, after):
            answers[name].pop("history")
            if answers[name]["details"] is not None:
                answers[name]["details"].pop("run_id", None)
    assert after == before
    assert store.verify().ok, store.verify()


def test_enhancing_a_legacy_prompt_in_place_keeps_what_its_keys_knew(backend: Backend) -> None:
    ids = insert_plan_shape(backend.raw)
    store = backend.store
    legacy_run = store.get_enhancement_details(ids["G"]).run_id
    store.enhance_prompt(ids["G"], create_new=False, enhanced_text="A crane at dawn, rewritten.")
    stored = backend.raw["prompts"].find_one({"_id": ids["G"]})
    assert set(stored["parameters"]) == {"name", "enhanced"}  # the stale keys are gone
    old = store.get_run(legacy_run)
    assert old.outputs["enhancement_model"] == "pixtral-legacy"  # moved onto the legacy run
    store.migrate(dry_run=False)
    assert store.verify().ok, store.verify()
    assert store.get_run(legacy_run).outputs["enhancement_model"] == "pixtral-legacy"


# -- damaged storage is never silent ----------------------------------------------------------


def test_an_empty_or_foreign_database_file_is_refused_and_left_untouched(tmp_path: Any) -> None:
    from cosmos_mongo.embedded import open_embedded
    from cosmos_mongo.errors import StorageError

    for content, why in ((b"", "empty"), (b"not a database at all\n" * 10, "not a SQLite")):
        data = tmp_path / why.replace(" ", "-")
        data.mkdir()
        file = data / "cosmos.sqlite3"
        file.write_bytes(content)
        with pytest.raises(StorageError, match=why):
            open_embedded(data)
        assert file.read_bytes() == content
        assert sorted(p.name for p in data.iterdir()) == ["cosmos.sqlite3"]


def test_new_data_dirs_and_files_are_private(tmp_path: Any) -> None:
    from cosmos_mongo.embedded import open_embedded

    data = tmp_path / "new" / "data"
    with open_embedded(data) as database:
        CosmosStore(database).create_prompt("A robot arm stacks blocks", {}, {})
    assert data.stat().st_mode & 0o777 == 0o700
    for file in data.iterdir():
        assert file.stat().st_mode & 0o777 == 0o600, file


def _damage(path: Any, prompt_id: str, change: Callable[[bytes], bytes]) -> None:
    import sqlite3

    import bson

    connection = sqlite3.connect(path)
    key = bson.encode({"_id": prompt_id})
    (body,) = connection.execute(
        "SELECT body FROM documents WHERE collection='prompts' AND key=?", (key,)
    ).fetchone()
    connection.execute(
        "UPDATE documents SET body=? WHERE collection='prompts' AND key=?", (change(body), key)
    )
    connection.commit()
    connection.close()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda body: body.replace(b"stacks", b"stocks"), id="a changed byte"),
        pytest.param(lambda body: b"\xff\xff\xff\x7f" + body[4:], id="a corrupt BSON length"),
    ],
)
def test_a_damaged_row_is_never_served_a_read_meeting_it_fails_clearly_and_verify_names_it(
    tmp_path: Any, change: Callable[[bytes], bytes]
) -> None:
    from cosmos_mongo.embedded import open_embedded
    from cosmos_mongo.errors import StorageError

    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        damaged = store.create_prompt("A robot arm stacks blocks", {}, {})
        healthy = store.create_prompt("Waves roll onto a beach", {}, {})
    _damage(tmp_path / "cosmos.sqlite3", damaged.id, change)
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        with pytest.raises(StorageError, match=f"damaged .*prompts {damaged.id}") as raised:
            store.get_prompt(damaged.id)
        assert raised.value.reason == "damaged"
        assert "rebuild-indexes" in str(raised.value) and "backup" in str(raised.value)
        assert store.get_prompt(healthy.id) == healthy
        with pytest.raises(StorageError, match="damaged"):  # a wrong list is never given
            store.list_prompts()
        report = store.verify()
        assert not report.ok
        first, *rest = report.damaged_documents
        assert first.startswith(f"prompts {damaged.id}:")
        assert rest == [
            "the other checks did not run: they would read through the damage (deal "
            "with it, then verify again)"
        ]


def test_a_page_that_meets_a_damaged_row_fails_clearly_and_other_documents_are_read(
    tmp_path: Any,
) -> None:
    from cosmos_mongo.embedded import open_embedded
    from cosmos_mongo.errors import StorageError

    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        store.ensure_indexes()  # more than a few per index: the listings walk them in order
        originals = [
            store.create_prompt(f"A robot arm stacks blocks {i}", {}, {}) for i in range(20)
        ]
        enhanced = [
            store.enhance_prompt(p.id, enhanced_text=f"In detail, stacks {i}").enhanced_prompt_id
            for i, p in enumerate(originals)
        ]
    _damage(
        tmp_path / "cosmos.sqlite3",
        enhanced[-1],
        lambda body: body.replace(b"stacks", b"stocks"),
    )
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        with pytest.raises(StorageError, match=f"damaged .*prompts {enhanced[-1]}"):
            store.list_enhanced_prompts(2)  # the newest: the first page reads it
        with pytest.raises(StorageError, match="damaged"):
            store.list_prompts(limit=2)
        assert store.get_prompt(enhanced[0]) is not None  # what does not reach it is read


def test_backup_copies_a_store_another_process_holds(tmp_path: Any) -> None:
    import subprocess
    import sys

    from cosmos_mongo.embedded import open_embedded

    holder = open_embedded(tmp_path / "data")  # an idle holder: its writes sit in the WAL
    prompts = [CosmosStore(holder).create_prompt(f"Prompt {i}", {}, {}) for i in range(20)]
    code = (
        "import sys; from cosmos_mongo.embedded import open_embedded; "
        "db = open_embedded(sys.argv[1]); print(db.backup(sys.argv[2])); db.close()"
    )
    copy = tmp_path / "backup.sqlite3"
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "data"), str(copy)], check=True, timeout=60
    )
    holder.close()
    assert copy.stat().st_mode & 0o777 == 0o600
    restored = tmp_path / "restored"
    restored.mkdir()
    copy.rename(restored / "cosmos.sqlite3")
    with open_embedded(restored) as database:
        store = CosmosStore(database)
        assert {p.id for p in store.list_prompts(limit=100)} == {p.id for p in prompts}
        assert store.verify().ok


# -- bad input and secrets ----------------------------------------------------------------------

SURROGATE = "\ud800"


def test_lone_surrogates_are_refused_with_the_field_named(backend: Backend) -> None:
    from cosmos_mongo import InvalidInputError

    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    before = backend.snapshot()
    calls = {
        "prompt_text": lambda: store.create_prompt(f"bad {SURROGATE} text", {}, {}),
        "parameters.name": lambda: store.create_prompt("ok", {}, {"name": SURROGATE}),
        "inputs": lambda: store.create_prompt("ok", {f"k{SURROGATE}": "v"}, {}),
        "query": lambda: store.search_prompts(SURROGATE),
        "enhanced_text": lambda: store.enhance_prompt(prompt.id, enhanced_text=SURROGATE + "x"),
        "execution_config.seed": lambda: store.create_run(prompt.id, {"seed": SURROGATE}),
    }
    for field, call in calls.items():
        with pytest.raises(InvalidInputError, match="lone surrogate") as caught:
            call()
        assert caught.value.field == field
    assert backend.snapshot() == before


def test_an_enhancer_that_returns_or_raises_bad_unicode_leaves_a_failed_run(
    backend: Backend,
) -> None:
    from cosmos_mongo.errors import EnhancementError
    from tests.test_enhancement import FailingEnhancer

    prompt = backend.store.create_prompt("A robot arm stacks blocks", {}, {})
    for enhancer in (
        FailingEnhancer(reply=f"A robot {SURROGATE} arm"),
        FailingEnhancer(error=RuntimeError(f"broken {SURROGATE} reply")),
    ):
        with pytest.raises(EnhancementError) as caught:
            store_on(backend, enhancer).enhance_prompt(prompt.id)
        run = backend.store.get_run(caught.value.run_id)
        assert run.status == "failed", run
    assert backend.store.list_runs(status="running") == []


def test_documents_over_16_mb_are_refused_like_a_server_would(backend: Backend) -> None:
    from cosmos_mongo import InvalidInputError

    store = backend.store
    huge = {f"k{i}": "😀" * 10_000 for i in range(450)}  # 450 x 40 kB of UTF-8
    with pytest.raises(InvalidInputError, match="at most 16777216") as caught:
        store.create_prompt("A robot arm stacks blocks", {}, huge)
    assert caught.value.field == "prompt"
    assert backend.snapshot() == {"prompts": [], "runs": []}


def test_numbers_and_durations_that_would_overflow_are_refused(backend: Backend) -> None:
    from cosmos_mongo import InvalidInputError

    store = backend.store
    for call in (
        lambda: store.list_prompts(offset=2**70),
        lambda: store.verify(stale_after=timedelta.max),
        lambda: store.repair(stale_after=timedelta(days=10**6)),
        lambda: store.create_prompt("ok", {}, {"steps": float("nan")}),
        lambda: store.create_prompt("ok", {}, {"steps": 2**80}),
    ):
        with pytest.raises(InvalidInputError):
            call()


def test_credentials_and_the_api_key_never_reach_messages_or_runs(backend: Backend) -> None:
    import httpx

    from cosmos_mongo.enhancers import OpenAICompatibleEnhancer
    from cosmos_mongo.errors import EnhancementError

    key = "sk-live-0123456789abcdef"

    def echo_key(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=f"invalid key {request.headers['Authorization']}")

    enhancer = OpenAICompatibleEnhancer(
        "http://alice:hunter2secret@127.0.0.1:9/v1",
        "pixtral",
        api_key=key,
        max_retries=0,
        transport=httpx.MockTransport(echo_key),
        async_transport=httpx.MockTransport(echo_key),
    )
    assert "hunter2secret" not in repr(enhancer)
    prompt = backend.store.create_prompt("A robot arm stacks blocks", {}, {})
    with pytest.raises(EnhancementError) as caught:
        store_on(backend, enhancer).enhance_prompt(prompt.id)
    stored = backend.store.get_run(caught.value.run_id).error_message
    for text in (str(caught.value), stored):
        assert "401" in text
        assert key not in text and "hunter2secret" not in text and "alice" not in text


def test_the_cli_answers_bad_arguments_in_one_line_without_a_traceback(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "COSMOS_MONGO_DATA_DIR": str(tmp_path), "COSMOS_MONGO_DEBUG": ""}
    env.pop("COSMOS_MONGO_URI", None)
    cases = [
        (["verify", "--stale-minutes", "nan"], 2),
        (["repair", "--stale-minutes", "inf"], 2),
        (["--uri", "mongodb://alice:secret@localhost:99999/", "prompt", "list"], 1),
        (["--uri", "mongodb://[::1", "prompt", "list"], 1),
        ([b"prompt", b"create", b"bad \xff\xfe bytes"], 1),
        (["prompt", "show", "ps_" + "0" * 32 + "$"], 1),
    ]
    for arguments, code in cases:
        done = subprocess.run(
            [sys.executable, "-m", "cosmos_mongo.cli", *arguments],
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        stderr = done.stderr.decode("utf-8", "replace")
        assert done.returncode == code, (arguments, stderr)
        assert "Traceback" not in stderr and "secret" not in stderr, stderr
        assert stderr.strip(), arguments


# -- interrupted deletions, and the quick checks that find them through small indexes ----------


def test_quick_verify_and_repair_read_only_through_the_small_indexes(backend: Backend) -> None:
    store = backend.store
    for number in range(3):
        prompt = store.create_prompt(f"A robot arm stacks {number} blocks", {}, {})
        store.enhance_prompt(prompt.id, enhanced_text=f"A robot arm stacks {number} red blocks.")
        store.create_run(prompt.id, {}, initial_status="completed")
    counted: list[CountingDatabase] = []

    def counting(database: Any) -> CountingDatabase:
        counted.append(CountingDatabase(database))
        return counted[-1]

    quick = backend.over(counting)
    assert quick.verify(quick=True).quick and quick.repair(quick=True).quick
    # Three look-ups each (interrupted enhancements, reverts, deletions): no aggregate, no
    # prompt scan, nothing that reads every run.
    assert counted[0].calls == [("runs", "find")] * 6
    full = store.verify()
    assert not full.quick and full.ok


@pytest.mark.parametrize("crash_at", [2, 3])
def test_quick_repair_settles_a_deletion_stopped_at_any_write(
    backend: Backend, crash_at: int
) -> None:
    from tests.test_enhancement import Crash, CrashingDatabase

    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    child = store.enhance_prompt(prompt.id, enhanced_text="A robot arm stacks red blocks.")
    store.create_run(prompt.id, {})
    with pytest.raises(Crash):
        backend.over(lambda database: CrashingDatabase(database, crash_at)).delete_prompt(prompt.id)
    assert store.verify(quick=True).ok  # too recent: a deletion may still be under way
    found = store.verify(stale_after=NOW, quick=True)
    if crash_at == 2:  # marked, but the prompt is still there
        assert found.half_finished == [
            f"{prompt.id}: deletion interrupted before the prompt was deleted (1 runs marked)"
        ]
    else:  # the prompt went; its run did not
        assert len(found.orphan_runs) == 1 and prompt.id in found.orphan_runs[0]
    repaired = store.repair(stale_after=NOW, quick=True)
    if crash_at == 2:
        assert repaired.deletions_cancelled == [prompt.id] and repaired.runs_removed == []
        assert len(store.list_runs(prompt_id=prompt.id)) == 2  # the run and the kept provenance
    else:
        assert repaired.deletions_finished == [prompt.id] and len(repaired.runs_removed) == 1
        assert [r.id for r in store.list_runs(prompt_id=prompt.id)] == [child.run_id]
    assert not any("deletion" in run for run in backend.snapshot()["runs"])
    assert store.verify(stale_after=NOW).ok and store.get_prompt(child.enhanced_prompt_id)


def test_repair_finishes_a_deletion_for_a_run_created_while_it_ran(backend: Backend) -> None:
    """A create_run that inserted after the marks and crashed before its own re-check left an
    unmarked run: finishing the deletion removes it too."""
    from tests.test_enhancement import Crash, CrashingDatabase

    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    store.create_run(prompt.id, {})
    late = store.create_run(prompt.id, {})
    backend.raw["runs"].update_one({"_id": late.id}, {"$set": {"status": "running"}})
    with pytest.raises(Crash):
        backend.over(lambda database: CrashingDatabase(database, 3)).delete_prompt(prompt.id)
    backend.raw["runs"].update_one({"_id": late.id}, {"$unset": {"deletion": ""}})
    repaired = store.repair(stale_after=NOW, quick=True)
    assert repaired.deletions_finished == [prompt.id] and late.id in repaired.runs_removed
    assert backend.snapshot()["runs"] == []


def test_a_marked_run_that_became_kept_provenance_is_unmarked_not_deleted(
    backend: Backend,
) -> None:
    """An enhancement that completed after the deletion marked its run is another prompt's
    birth record by then: repair keeps it and only takes the mark off."""
    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    child = store.enhance_prompt(prompt.id, enhanced_text="A robot arm stacks red blocks.")
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    mark = {"deletion": {"prompt_id": prompt.id, "started_at": long_ago}}
    backend.raw["runs"].update_one({"_id": child.run_id}, {"$set": mark})
    backend.raw["prompts"].delete_one({"_id": prompt.id})
    assert not store.verify(quick=True).ok
    repaired = store.repair(quick=True)
    assert repaired.deletions_finished == [prompt.id] and repaired.runs_removed == []
    kept = backend.raw["runs"].find_one({"_id": child.run_id})
    assert kept is not None and "deletion" not in kept
    assert store.verify(stale_after=NOW).ok


def test_a_hand_set_flag_is_left_to_the_full_checks(backend: Backend) -> None:
    store = backend.store
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    backend.raw["prompts"].update_one({"_id": prompt.id}, {"$set": {"parameters.enhanced": True}})
    assert store.verify(quick=True).ok  # quick never reads every prompt
    assert store.repair(quick=True).flags_fixed == []
    assert store.verify().flag_mismatches and store.repair().flags_fixed == [prompt.id]
    assert store.verify().ok


def test_quick_must_be_a_boolean(backend: Backend) -> None:
    from cosmos_mongo import InvalidInputError

    with pytest.raises(InvalidInputError, match="quick"):
        backend.store.verify(quick="yes")
    with pytest.raises(InvalidInputError, match="quick"):
        backend.store.repair(quick=1)
