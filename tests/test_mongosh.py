"""Every statement of docs/MONGOSH.md runs in the real mongosh and answers what the guide says.

mongosh is installed from npm into the git-ignored ``.tools/mongosh/`` the first time
(:mod:`tests.helpers.mongosh`); without Node.js and npm these tests skip. The data is written
by the product (``CosmosStore`` over the test server, on a scratch database dropped
afterwards) and holds each case the guide speaks of: a plain prompt; a create_new enhancement
whose original was then deleted (its run is kept as the enhanced prompt's provenance); an
in-place rewrite; a create_new child; a failed enhancement; a transfer run; and the
predecessor's data imported from its SQLite file (an enhanced prompt keeping the legacy keys,
its enhance run without ``enhancement_model``/``enhanced_at``, an old failed run).

How the guide is read, mechanically, so a statement added later is run too:

- every fenced block opened with ```` ```javascript ```` or ```` ```js ````, in order;
- whole-line ``//`` comments are dropped (they show results, not code);
- a statement starts on a line at the left margin; indented lines, and lines starting with
  ``)``, ``]``, ``}`` or ``.``, continue the one above; a trailing ``;`` is dropped;
- placeholders are substituted: every ``ps_…`` is the id of one prompt, :attr:`World.focus`
  (enhanced from the deleted original, then rewritten in place, enhanced into a child, and
  with a failed enhancement and a transfer run: every question about "a prompt" has an
  answer); ``use cosmos`` switches to the scratch database instead. Any other ``…`` left in
  a statement fails the test: it needs a rule here.

Each statement is checked against :data:`EXPECTED`, keyed by its first line. mongosh runs
every statement three times (:class:`Answers`): on the data as written, after ``migrate``
(:data:`EXPECTED_MIGRATED`: verification queries 1 and 2 return nothing, 3 still the kept
provenance), and after a person deleted a prompt by hand (:data:`EXPECTED_DAMAGED`: query 3
also returns the dangling edge). ``verify`` is asked in each phase: it accepts the kept
provenance and reports the damage.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cosmos_mongo import CosmosStore
from cosmos_mongo import queries as q
from cosmos_mongo.errors import EnhancementError
from tests import predecessor_db as old
from tests.helpers.mongosh import (
    Answer,
    MongoshUnavailable,
    find_or_install,
    run_statements,
)
from tests.helpers.plans import plan_stages
from tests.wire_server import SORT_STAGE_GAP, WireServer, stand_in_gap

# One worker runs every mongosh test, so a fresh clone installs mongosh once (pytest-xdist).
pytestmark = pytest.mark.xdist_group("mongosh")

REPO = Path(__file__).parent.parent
GUIDE = REPO / "docs" / "MONGOSH.md"
BLOCK = re.compile(r"^```(?:javascript|js)\n(.*?)^```", re.S | re.M)
PLACEHOLDER_ID = "ps_\u2026"  # "ps_…"
CONTINUATION = (" ", "\t", ")", "]", "}", ".")


def guide_statements(markdown: str) -> list[str]:
    """The statements of every javascript block of ``markdown``, in order (rules above)."""
    statements: list[str] = []
    for block in BLOCK.findall(markdown):
        current: list[str] = []
        for line in block.splitlines():
            if not line.strip() or line.strip().startswith("//"):
                continue
            if line.startswith(CONTINUATION) and current:
                current.append(line)
                continue
            if current:
                statements.append("\n".join(current))
            current = [line]
        if current:
            statements.append("\n".join(current))
    return [statement.rstrip().removesuffix(";") for statement in statements]


def key(statement: str) -> str:
    """A statement's name in :data:`EXPECTED`: its first line, spaces collapsed."""
    return " ".join(statement.splitlines()[0].split())


def substituted(statement: str, world: World) -> str:
    if key(statement) == "use cosmos":
        return f"use {world.database}"
    filled = statement.replace(PLACEHOLDER_ID, world.focus)
    assert "\u2026" not in filled, f"a placeholder with no substitution rule: {statement}"
    return filled


STATEMENTS = guide_statements(GUIDE.read_text())


# -- the data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """What the product wrote, by role, and when each document was created."""

    database: str
    plain: str  # a prompt never enhanced
    deleted_original: str  # enhanced with create_new into `focus`, then deleted
    focus: str  # stands for every "ps_…" of the guide
    child: str  # enhanced from `focus` with create_new
    legacy_original: str
    legacy_child: str  # enhanced by the predecessor: legacy keys in its parameters
    kept_run: str  # deleted_original -> focus: kept as focus's provenance
    rewrite_run: str  # focus -> focus, in place, after kept_run
    child_run: str  # focus -> child
    failed_run: str  # an enhancement of focus whose enhancer failed
    transfer_run: str  # a transfer run of focus
    legacy_run: str  # legacy_original -> legacy_child, as the predecessor wrote it
    legacy_failed_run: str  # a failed run of legacy_child, in 2024
    created: Mapping[str, datetime]  # every prompt and run id -> created_at
    texts: Mapping[str, str]  # every prompt id -> its current text

    @property
    def prompts(self) -> set[str]:
        return {self.plain, self.focus, self.child, self.legacy_original, self.legacy_child}


class FailingEnhancer:
    model = "broken-llm"

    def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        raise ConnectionError("connection refused")

    async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        raise ConnectionError("connection refused")


def _predecessor_file(path: Path) -> tuple[str, str, str, str]:
    """The predecessor's SQLite file: a drone prompt enhanced with create_new, recorded both
    in the prompt's legacy keys and in a run without enhancement_model or enhanced_at."""
    original, child = old.pid(1), old.pid(2)
    run, failed = old.rid(1), old.rid(2)
    text = "A drone glides low over green farmland at sunset, the camera tilting down"
    with closing(old.create(path)) as db:
        old.add_prompt(
            db,
            original,
            "A drone over farmland",
            "2024-01-01 12:00:00",
            {"video": "d.mp4"},
            {"name": "drone"},
        )
        old.add_prompt(
            db,
            child,
            text,
            "2024-01-01 12:30:00",
            {"video": "d.mp4"},
            {
                "name": "drone_enhanced",
                "enhanced": True,
                "enhancement_model": "pixtral",
                "enhanced_at": "2024-01-01T12:30:00Z",
                "parent_prompt_id": original,
                "last_enhancement_run_id": run,
            },
        )
        old.add_run(
            db,
            run,
            original,
            model_type="enhance",
            created="2024-01-01 12:30:00",
            config={"model": "pixtral"},
            outputs={
                "enhanced_text": text,
                "original_prompt_id": original,
                "enhanced_prompt_id": child,
                "duration_seconds": 3.5,
                "timestamp": "2024-01-01T12:30:00Z",
            },
        )
        old.add_run(
            db, failed, child, status="failed", created="2024-01-02 08:00:00", error="CUDA OOM"
        )
        db.commit()
    return original, child, run, failed


def write_world(store: CosmosStore, database: str, workdir: Path) -> World:
    plain = store.create_prompt(
        "A forklift lifts a pallet in a bright warehouse", {"video": "f.mp4"}, {"name": "forklift"}
    )
    original = store.create_prompt(
        "A robot arm stacks blocks", {"video": "r.mp4"}, {"name": "robot"}
    )
    kept = store.enhance_prompt(
        original.id,
        enhanced_text="A robot arm carefully stacks three wooden blocks on a workbench",
        enhancement_model="pixtral",
    )
    focus = kept.enhanced_prompt_id
    rewrite = store.enhance_prompt(
        focus,
        create_new=False,
        enhanced_text="A steel robot arm stacks three wooden blocks on a sunlit workbench",
        enhancement_model="nim-llama",
    )
    child = store.enhance_prompt(
        focus,
        enhanced_text="A steel robot arm stacks three blocks, then knocks the tower over",
        enhancement_model="pixtral",
    )
    failing = CosmosStore(store.db, enhancer=FailingEnhancer())
    with pytest.raises(EnhancementError) as failure:
        failing.enhance_prompt(focus)
    assert failure.value.run_id is not None
    transfer = store.create_run(focus, {"num_steps": 35})
    store.delete_prompt(original.id)
    legacy_original, legacy_child, legacy_run, legacy_failed = _predecessor_file(
        workdir / "cosmos.db"
    )
    report = store.import_sqlite(workdir / "cosmos.db")
    assert (report.prompts.imported, report.runs.imported, report.problems) == (2, 2, [])

    prompts = {
        p["_id"]: p for p in store.db["prompts"].find({}, {"prompt_text": 1, "created_at": 1})
    }
    runs = {r["_id"]: r for r in store.db["runs"].find({}, {"created_at": 1})}
    world = World(
        database=database,
        plain=plain.id,
        deleted_original=original.id,
        focus=focus,
        child=child.enhanced_prompt_id,
        legacy_original=legacy_original,
        legacy_child=legacy_child,
        kept_run=kept.run_id,
        rewrite_run=rewrite.run_id,
        child_run=child.run_id,
        failed_run=failure.value.run_id,
        transfer_run=transfer.id,
        legacy_run=legacy_run,
        legacy_failed_run=legacy_failed,
        created={i: doc["created_at"] for i, doc in [*prompts.items(), *runs.items()]},
        texts={i: doc["prompt_text"] for i, doc in prompts.items()},
    )
    assert set(prompts) == world.prompts
    # What the checks below take for granted: the rewrite is the later of the two enhance
    # runs that produced the focus (the guide's sort is by created_at alone).
    assert world.created[world.rewrite_run] > world.created[world.kept_run]
    return world


AS_WRITTEN, MIGRATED, DAMAGED = "as written", "after migrate", "after a result was deleted"


@dataclass(frozen=True)
class Answers:
    """What mongosh answered to each statement, and what ``verify`` said, in each phase:
    the data as written; after ``migrate``; after a person deleted the child prompt by hand,
    leaving its enhance run pointing at nothing (then ``repair``)."""

    world: World
    found: dict[str, dict[str, Answer]]  # phase -> statement key -> answer
    verified: dict[str, Any]  # phase -> VerificationReport
    repaired: Any  # the RepairReport after the damage


@pytest.fixture(scope="session")
def mongosh() -> Path:
    try:
        return find_or_install()
    except MongoshUnavailable as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def answers(
    mongosh: Path, wire_server: WireServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Answers]:
    from pymongo import MongoClient

    database = f"cosmos_mongosh_{uuid.uuid4().hex[:12]}"
    workdir = tmp_path_factory.mktemp("mongosh")
    client: Any = MongoClient(wire_server.uri, tz_aware=True)
    try:
        store = CosmosStore(client[database])
        store.ensure_indexes()
        world = write_world(store, database, workdir)
        statements = [substituted(statement, world) for statement in STATEMENTS]
        found: dict[str, dict[str, Answer]] = {}
        verified: dict[str, Any] = {}

        def run(phase: str) -> None:
            (workdir / str(len(found))).mkdir()
            answered = run_statements(
                mongosh, wire_server.uri, database, statements, workdir / str(len(found))
            )
            found[phase] = {key(s): a for s, a in zip(STATEMENTS, answered, strict=True)}
            verified[phase] = store.verify()

        run(AS_WRITTEN)
        store.migrate(dry_run=False)
        run(MIGRATED)
        client[database]["prompts"].delete_one({"_id": world.child})
        run(DAMAGED)
        yield Answers(world, found, verified, store.repair())
    finally:
        client.drop_database(database)
        client.close()


# -- what the guide says each statement returns ------------------------------------------------

Check = Callable[[Any, World], None]


def _ids(documents: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(document["_id"]) for document in documents]


def _newest_first(ids: Sequence[str], world: World) -> None:
    """``ids`` come newest first (ties within a millisecond may come either way)."""
    times = [world.created[i] for i in ids]
    assert times == sorted(times, reverse=True), ids


def _use(answer: Any, world: World) -> None:
    assert answer == world.database  # the shell is in the product's database


def _a_prompt(answer: Any, world: World) -> None:
    # { _id: "ps_…", prompt_text: "…", inputs: {…}, parameters: {…}, created_at, updated_at }
    # (the predecessor's imported prompts have no updated_at)
    assert answer["_id"] in world.prompts
    assert {"_id", "prompt_text", "inputs", "parameters", "created_at"} <= set(answer)
    assert set(answer) <= {"_id", "prompt_text", "inputs", "parameters", "created_at", "updated_at"}
    assert isinstance(answer["prompt_text"], str) and isinstance(answer["created_at"], datetime)
    assert isinstance(answer["inputs"], dict) and isinstance(answer["parameters"], dict)


def _an_enhance_run(answer: Any, world: World) -> None:
    # any enhance run (which one is the server's natural order); the guide shows a completed
    # one written by this version: the run is the whole record of the enhancement
    written_here = {world.kept_run, world.rewrite_run, world.child_run, world.failed_run}
    assert answer["_id"] in written_here | {world.legacy_run}
    assert answer["model_type"] == "enhance" and answer["prompt_id"].startswith("ps_")
    if answer["_id"] in written_here:
        assert {"model", "create_new", "original_prompt_text"} <= set(answer["execution_config"])
    if answer["_id"] in written_here and answer["status"] == "completed":
        assert set(answer["outputs"]) == set(q.OUTPUT_FIELDS)
        assert isinstance(answer["outputs"]["enhanced_at"], datetime)


def _indexes_of(collection: str) -> Check:
    def check(answer: Any, world: World) -> None:
        names = {index["name"] for index in answer}
        assert names == {"_id_"} | {s.name for s in q.INDEXES if s.collection == collection}

    return check


def _newest_prompts(answer: Any, world: World) -> None:
    assert set(_ids(answer)) == world.prompts  # five prompts: all of them, at most ten
    _newest_first(_ids(answer), world)
    for document in answer:
        assert set(document) == {"_id", "prompt_text", "parameters"}
        assert set(document["parameters"]) <= {"name"}
        assert document["prompt_text"] == world.texts[document["_id"]]


def _enhanced_newest_first(answer: Any, world: World) -> None:
    assert set(_ids(answer)) == {world.focus, world.child, world.legacy_child}
    _newest_first(_ids(answer), world)


def _served_by_the_partial_index(answer: Any, world: World) -> None:
    stages = plan_stages(answer)
    names = [stage.get("stage") for stage in stages]
    scans = [stage for stage in stages if stage.get("stage") == "IXSCAN"]
    assert [scan.get("indexName") for scan in scans] == ["prompts_enhanced_created_at_id"]
    assert scans[0].get("isPartial") is True and "FETCH" in names
    assert "COLLSCAN" not in names and "SORT" not in names, names


def _runs_of_a_prompt(answer: Any, world: World) -> None:
    # every run of the prompt, of any type and status; the kept provenance is the deleted
    # original's run, not the focus's
    assert set(_ids(answer)) == {
        world.rewrite_run,
        world.child_run,
        world.failed_run,
        world.transfer_run,
    }
    _newest_first(_ids(answer), world)


def _failures_of_the_last_day(answer: Any, world: World) -> None:
    assert _ids(answer) == [world.failed_run]  # not the predecessor's failure of 2024
    assert set(answer[0]) == {"_id", "model_type", "error_message"}
    assert answer[0]["model_type"] == "enhance"
    assert "connection refused" in answer[0]["error_message"]


def _how_a_prompt_got_its_text(answer: Any, world: World) -> None:
    assert _ids(answer) == [world.rewrite_run]  # the in-place rewrite, later than its birth
    assert answer[0]["outputs"]["enhanced_text"] == world.texts[world.focus]


def _enhanced_from_a_prompt(answer: Any, world: World) -> None:
    # the create_new child only: not the in-place rewrite (a self-edge), not the failure
    assert answer == [{"_id": world.child_run, "outputs": {"enhanced_prompt_id": world.child}}]


def _ancestors(answer: Any, world: World) -> None:
    # the deleted original, through its kept run; the rewrite's self-edge is dropped
    assert answer == [
        {
            "depth": 0,
            "parent": world.deleted_original,
            "child": world.focus,
            "run": world.kept_run,
        }
    ]


def _legacy_keys(answer: Any, world: World) -> None:
    # the predecessor's enhanced prompt, until `migrate` moves its keys into its run
    assert _ids(answer) == [world.legacy_child]
    assert set(answer[0]) == {"_id", "parameters"}
    assert {"parent_prompt_id", "enhancement_model"} <= set(answer[0]["parameters"])


def _incomplete_runs(answer: Any, world: World) -> None:
    # the predecessor's enhance run, without enhancement_model and enhanced_at until `migrate`
    assert _ids(answer) == [world.legacy_run]
    assert not {"enhancement_model", "enhanced_at"} & set(answer[0]["outputs"])


def _kept_provenance(answer: Any, world: World) -> None:
    # the run that produced the focus from the deleted original: kept provenance, not damage
    assert answer == [
        {"_id": world.kept_run, "original": world.deleted_original, "enhanced": world.focus}
    ]


def _nothing(answer: Any, world: World) -> None:
    assert answer == []


def _lineage(answer: Any, world: World) -> None:
    # one row per enhance run, whatever its status
    assert [row for row in answer if not row] == [{}]  # the failed one: no outputs
    rows = sorted((row["original"], row["enhanced"]) for row in answer if row)
    assert rows == sorted(
        [
            (world.deleted_original, world.focus),
            (world.focus, world.focus),
            (world.focus, world.child),
            (world.legacy_original, world.legacy_child),
        ]
    )


EXPECTED: dict[str, Check] = {
    "use cosmos": _use,
    "db.prompts.findOne()": _a_prompt,
    'db.runs.findOne({ model_type: "enhance" })': _an_enhance_run,
    "db.prompts.getIndexes()": _indexes_of("prompts"),
    "db.runs.getIndexes()": _indexes_of("runs"),
    'db.prompts.find({}, { prompt_text: 1, "parameters.name": 1 }).sort({ created_at: -1 })'
    ".limit(10)": _newest_prompts,
    'db.prompts.find({ "parameters.enhanced": true }).sort({ created_at: -1 }).limit(20)': (
        _enhanced_newest_first
    ),
    'db.prompts.find({ "parameters.enhanced": true }).sort({ created_at: -1 }).explain()'
    ".queryPlanner.winningPlan": _served_by_the_partial_index,
    'db.runs.find({ prompt_id: "ps_…" }).sort({ created_at: -1 })': _runs_of_a_prompt,
    'db.runs.find({ status: "failed", created_at: { $gt: new Date(Date.now() - 864e5) } },': (
        _failures_of_the_last_day
    ),
    'db.runs.find({ model_type: "enhance", status: "completed", "outputs.enhanced_prompt_id": '
    '"ps_…" })': _how_a_prompt_got_its_text,
    'db.runs.find({ model_type: "enhance", status: "completed", "outputs.original_prompt_id": '
    '"ps_…",': _enhanced_from_a_prompt,
    "db.prompts.aggregate([": _ancestors,
    "db.prompts.find({": _legacy_keys,
    "db.runs.find({": _incomplete_runs,
    "db.runs.aggregate([": _kept_provenance,
    'db.runs.find({ model_type: "enhance" },': _lineage,
}

# The verification queries once `migrate` has run: 1 and 2 return nothing, 3 still returns
# the kept provenance (and `verify` accepts it).
EXPECTED_MIGRATED: dict[str, Check] = {
    "db.prompts.find({": _nothing,
    "db.runs.find({": _nothing,
    "db.runs.aggregate([": _kept_provenance,
}


def _kept_provenance_and_damage(answer: Any, world: World) -> None:
    by_id = {row["_id"]: row for row in answer}
    assert by_id == {
        world.kept_run: {
            "_id": world.kept_run,
            "original": world.deleted_original,
            "enhanced": world.focus,
        },
        world.child_run: {"_id": world.child_run, "original": world.focus, "enhanced": world.child},
    }
    assert len(answer) == 2


# After the child prompt was deleted by hand: its enhance run is a dangling edge.
EXPECTED_DAMAGED: dict[str, Check] = {"db.runs.aggregate([": _kept_provenance_and_damage}
PHASES = ((AS_WRITTEN, EXPECTED), (MIGRATED, EXPECTED_MIGRATED), (DAMAGED, EXPECTED_DAMAGED))


# Where SecantusDB departs from the MongoDB manual, with a three-line reproduction each.
STAND_IN_GAPS: dict[str, str] = {
    # db.c.createIndex({a: 1, t: -1}); db.c.insertOne({a: 1, t: 1})
    # db.c.find({a: 1}).sort({t: -1}).explain().queryPlanner.winningPlan.stage
    # // SecantusDB: "SORT" over FETCH over IXSCAN a_1_t_-1; mongod: "FETCH" over IXSCAN
    'db.prompts.find({ "parameters.enhanced": true }).sort({ created_at: -1 }).explain()'
    ".queryPlanner.winningPlan": SORT_STAGE_GAP,
}


# -- the tests ---------------------------------------------------------------------------------


def test_the_guide_is_read_into_statements_that_each_have_an_expectation() -> None:
    keys = [key(statement) for statement in STATEMENTS]
    assert len(keys) == len(set(keys)), "two statements share a first line: rename one"
    missing = [k for k in keys if k not in EXPECTED]
    assert not missing, f"statements of MONGOSH.md with no check in EXPECTED: {missing}"
    stale = set(EXPECTED) - set(keys)
    assert not stale, f"checks of statements MONGOSH.md no longer has: {stale}"


def test_statements_are_split_at_the_left_margin_and_comments_dropped() -> None:
    markdown = (
        "```javascript\n// a title\ndb.a.find({ x: 1 })\n  .sort({ t: -1 })\n"
        "db.b.aggregate([\n  { $match: {} }\n]);\n// { result: … }\n```\n"
        "```bash\nmongosh\n```\n```js\nuse cosmos\n```\n"
    )
    assert guide_statements(markdown) == [
        "db.a.find({ x: 1 })\n  .sort({ t: -1 })",
        "db.b.aggregate([\n  { $match: {} }\n])",
        "use cosmos",
    ]


def test_mongosh_is_reported_missing_without_npm(tmp_path: Path) -> None:
    with pytest.raises(MongoshUnavailable, match="not found on PATH"):
        find_or_install(tmp_path / "mongosh", path=str(tmp_path))
    assert not (tmp_path / "mongosh").exists()


@pytest.mark.slow  # runs a stand-in npm
def test_a_failed_npm_install_says_what_npm_said_and_leaves_nothing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("node", "exit 0"), ("npm", "echo 'npm error 404 Not Found'; exit 1")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    with pytest.raises(RuntimeError, match=r"(?s)failed \(exit 1\).*npm error 404"):
        find_or_install(tmp_path / "tools" / "mongosh", path=str(bin_dir))
    assert list((tmp_path / "tools").iterdir()) == []


@pytest.mark.realserver
@pytest.mark.slow
@pytest.mark.parametrize(
    "statement", STATEMENTS, ids=[f"{n}-{key(s)[:48]}" for n, s in enumerate(STATEMENTS, 1)]
)
def test_each_statement_of_the_guide_answers_in_mongosh_as_the_guide_says(
    statement: str, answers: Answers, wire_server: WireServer, request: pytest.FixtureRequest
) -> None:
    name = key(statement)
    if name in STAND_IN_GAPS:
        stand_in_gap(request, wire_server, STAND_IN_GAPS[name])
    for phase, expected in PHASES:
        if name in expected:
            answer = answers.found[phase][name]
            assert answer.error is None, f"{phase}: mongosh answered {answer.error}"
            expected[name](answer.value, answers.world)


@pytest.mark.realserver
@pytest.mark.slow
def test_verify_accepts_the_kept_provenance_that_query_3_returns_and_reports_damage(
    answers: Answers,
) -> None:
    world, verified = answers.world, answers.verified
    as_written, migrated, damaged = verified[AS_WRITTEN], verified[MIGRATED], verified[DAMAGED]
    assert as_written.prompts_with_legacy_keys == [world.legacy_child]
    assert as_written.incomplete_enhance_runs == [world.legacy_run]
    assert not any(world.kept_run in line for line in as_written.dangling_edges)
    assert migrated.ok, migrated
    assert len(damaged.dangling_edges) == 1 and world.child_run in damaged.dangling_edges[0]
    assert answers.repaired.runs_removed == [world.child_run]
