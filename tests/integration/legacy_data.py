"""Documents written the predecessor's way, inserted directly: the backward-compat fixture."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def pid(n: int) -> str:
    return f"ps_{n:032x}"


def rid(n: int) -> str:
    return f"rs_{n:032x}"


def prompt(n: int, text: str, minutes: int, **parameters: Any) -> dict[str, Any]:
    return {
        "_id": pid(n),
        "prompt_text": text,
        "inputs": {"video": f"inputs/{n}.mp4"},
        "parameters": parameters,
        "created_at": T0 + timedelta(minutes=minutes),  # no updated_at: older versions lacked it
    }


def run(
    n: int, prompt_id: str, minutes: int, outputs: dict[str, Any], model: str
) -> dict[str, Any]:
    return {  # no metadata, no enhanced_at, no enhancement_model: as the predecessor wrote them
        "_id": rid(n),
        "prompt_id": prompt_id,
        "model_type": "enhance",
        "status": "completed",
        "execution_config": {"model": model},
        "outputs": outputs,
        "created_at": T0 + timedelta(minutes=minutes),
        "updated_at": T0 + timedelta(minutes=minutes),
    }


def insert_legacy(raw: Any) -> dict[str, str]:
    """A: original; B: create_new of A with run and keys; C: overwrite with run and keys;
    E -> D: create_new known only from keys; F: overwrite known only from keys."""
    stamp = "2024-01-01T12:30:00Z"
    raw["prompts"].insert_many(
        [
            prompt(1, "A robot arm stacks blocks", 0, name="robot"),
            prompt(
                2,
                "A robot arm carefully stacks three wooden blocks on a bench",
                30,
                name="robot_enhanced",
                enhanced=True,
                enhancement_model="pixtral",
                enhanced_at=stamp,
                parent_prompt_id=pid(1),
                last_enhancement_run_id=rid(1),
            ),
            prompt(
                3,
                "Rain falls on a neon street at night, cars pass slowly",
                40,
                name="rain",
                enhanced=True,
                enhancement_model="pixtral",
                enhanced_at="2024-01-01T12:45:00Z",
                last_enhancement_run_id=rid(2),
            ),
            prompt(5, "A drone over farmland", 50, name="drone"),
            prompt(
                4,
                "A drone glides low over green farmland at sunset",
                55,
                name="drone_enhanced",
                enhanced=True,
                enhancement_model="llava",
                enhanced_at="2024-01-01T12:56:00Z",
                parent_prompt_id=pid(5),
            ),
            prompt(
                6,
                "A forklift lifts a pallet in a bright warehouse",
                60,
                enhanced=True,
                enhancement_model="nim-llama",
                enhanced_at="2024-01-01T13:01:00+00:00",
            ),
        ]
    )
    raw["runs"].insert_many(
        [
            run(
                1,
                pid(1),
                29,
                {
                    "enhanced_text": "A robot arm carefully stacks three wooden blocks on a bench",
                    "original_prompt_id": pid(1),
                    "enhanced_prompt_id": pid(2),
                    "duration_seconds": 45.2,
                    "timestamp": stamp,
                },
                "pixtral",
            ),
            run(
                2,
                pid(3),
                44,
                {
                    "enhanced_text": "Rain falls on a neon street at night, cars pass slowly",
                    "original_prompt_id": pid(3),
                    "enhanced_prompt_id": pid(3),
                    "duration_seconds": 12.0,
                    "timestamp": "2024-01-01T12:45:00Z",
                },
                "pixtral",
            ),
        ]
    )
    return {"A": pid(1), "B": pid(2), "C": pid(3), "D": pid(4), "E": pid(5), "F": pid(6)}


# The shapes the predecessor could leave when an overwritten (or created) prompt's
# `last_enhancement_run_id` names a run that does not record the prompt as its result. Each
# maps to what migrating it must do: "adopted" (the named run is the older shape of the run
# that made the prompt, and gains the outputs it lacks), "named" (a run is created under the
# free named id) or "new" (a run is created under a new id, the named id kept in its metadata).
NAMED_RUN_VARIANTS: Final = {
    "free id": (20, "named"),
    "older run shape, in place": (21, "adopted"),
    "older run shape, created": (23, "adopted"),
    "failed enhance run": (24, "new"),
    "non-enhance run": (25, "new"),
    "run that made another prompt": (26, "new"),
    "created, failed run of the original": (29, "new"),
    "first of two naming one free id": (30, "named"),
    "second of two naming one free id": (31, "new"),
    "malformed id": (33, "new"),
}


def _keys(run_id: object, **more: Any) -> dict[str, Any]:
    return {
        "enhanced": True,
        "enhancement_model": "pixtral",
        "enhanced_at": "2024-01-02T09:00:00Z",
        "last_enhancement_run_id": run_id,
        **more,
    }


def _other(n: int, prompt_id: str, model_type: str, status: str, **outputs: Any) -> dict[str, Any]:
    document = run(n, prompt_id, n, outputs, "pixtral")
    document.update(model_type=model_type, status=status)
    return document


def named_run_variants() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Prompts and runs of every :data:`NAMED_RUN_VARIANTS` shape, as the predecessor wrote
    them (ids 20 to 33, apart from :func:`insert_legacy`'s)."""
    older = {"timestamp": "2024-01-02T09:00:00Z"}  # before runs named their prompts
    prompts = [
        prompt(20, "A crane lifts a steel beam at dawn", 20, **_keys(rid(20))),
        prompt(21, "A cat naps on a sunny windowsill, tail twitching", 21, **_keys(rid(21))),
        prompt(22, "A boat at sea", 22, name="boat"),
        prompt(
            23,
            "A small sailboat cuts through grey waves under low clouds",
            23,
            **_keys(rid(23), parent_prompt_id=pid(22)),
        ),
        prompt(24, "Snow falls on a quiet pine forest", 24, **_keys(rid(24))),
        prompt(25, "A welding robot sparks on an assembly line", 25, **_keys(rid(25))),
        prompt(26, "A train crosses a desert bridge", 26, **_keys(rid(26))),
        prompt(27, "A long freight train crosses a red desert bridge", 27, enhanced=True),
        prompt(28, "A kite in the wind", 28, name="kite"),
        prompt(
            29,
            "A red kite climbs against a bright blue sky",
            29,
            **_keys(rid(29), parent_prompt_id=pid(28)),
        ),
        prompt(30, "A lighthouse beam sweeps the fog", 30, **_keys(rid(30))),
        prompt(31, "Waves break on black volcanic sand", 31, **_keys(rid(30))),
        prompt(33, "A bee lands on a lavender flower", 33, **_keys("rs_not-a-run-id")),
    ]
    runs = [
        _other(
            21,
            pid(21),
            "enhance",
            "completed",
            enhanced_text="A cat naps on a sunny windowsill, tail twitching",
            **older,
        ),
        _other(
            23,
            pid(22),
            "enhance",
            "completed",
            enhanced_text="A small sailboat cuts through grey waves under low clouds",
            **older,
        ),
        _other(24, pid(24), "enhance", "failed"),
        _other(25, pid(25), "transfer", "completed", video="outputs/25.mp4"),
        _other(
            26,
            pid(26),
            "enhance",
            "completed",
            enhanced_text="A long freight train crosses a red desert bridge",
            original_prompt_id=pid(26),
            enhanced_prompt_id=pid(27),
            duration_seconds=4.0,
            **older,
        ),
        _other(29, pid(28), "enhance", "failed"),
    ]
    runs[2]["error_message"] = "enhancer timed out"
    return prompts, runs


def insert_named_run_variants(raw: Any) -> dict[str, str]:
    """Insert :func:`named_run_variants`; returns each variant's prompt id by name."""
    prompts, runs = named_run_variants()
    raw["prompts"].insert_many(prompts)
    raw["runs"].insert_many(runs)
    return {name: pid(n) for name, (n, _) in NAMED_RUN_VARIANTS.items()}
