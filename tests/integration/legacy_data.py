"""Documents written the predecessor's way, inserted directly: the backward-compat fixture."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

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
