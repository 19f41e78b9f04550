"""`cosmos-mongo demo`: what a new user sees first reads well and never repeats itself."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from cosmos_mongo import CosmosStore
from cosmos_mongo import cli as cli_module
from cosmos_mongo.cli import DEMO_PROMPTS, cli
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.enhancers import MAX_ENHANCED_WORDS

_SENTENCE = re.compile(r"[A-Z][^.!?…│┃]*[.!?](?=\s|$)")


def sentences(text: str) -> list[str]:
    """The whole sentences of ``text`` (a capital letter to a full stop, at least four words);
    a table cell cut short with an ellipsis is no sentence."""
    return [match for match in _SENTENCE.findall(text) if len(match.split()) >= 4]


def doubled_words(text: str) -> list[str]:
    """Runs of one to four words written twice in a row ("the robot the robot")."""
    found = re.finditer(r"\b((?:[a-z']+ ){0,3}[a-z']+) \1\b", text.lower())
    return [match.group(0) for match in found]


@pytest.fixture
def demo_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.delenv("COSMOS_MONGO_DATABASE", raising=False)
    monkeypatch.delenv("COSMOS_MONGO_ENHANCER_BASE_URL", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_no_sentence_of_the_demo_output_repeats(demo_output: str) -> None:
    found = sentences(demo_output)
    assert len(found) >= 8  # the enhanced text is shown whole
    assert [text for text, count in Counter(found).items() if count > 1] == []
    assert doubled_words(demo_output) == []


def test_the_demo_shows_a_prompt_before_and_after_enhancement(demo_output: str) -> None:
    name, text, _ = DEMO_PROMPTS[0]
    assert f"{name}, as written (14 words):\n  {text}\n" in demo_output
    assert "enhanced by template-v1 into ps_" in demo_output
    assert f"  {text}. The robot arm is the clear focus of the shot" in demo_output
    assert "Next, on this database:\n  cosmos-mongo --db cosmos_demo prompt show ps_" in (
        demo_output
    )


def test_every_prompt_the_demo_enhances_reads_well(demo_output: str, tmp_path: Path) -> None:
    with open_embedded(tmp_path / "data", "cosmos_demo") as database:
        store = CosmosStore(database)
        enhanced = {prompt.name: prompt.prompt_text for prompt in store.list_enhanced_prompts()}
    assert len(enhanced) == 5
    for name, text in enhanced.items():
        found = sentences(text)
        assert len(found) == len(set(found)), name
        assert doubled_words(text) == [], name
        assert len(text.split()) <= MAX_ENHANCED_WORDS, name
    # The edited prompt, enhanced again in place: the edit kept, the lighting following it,
    # and the enhancer's sentences once each.
    final = enhanced["robot-blocks_enhanced_enhanced"]
    assert final.startswith(
        "A robot arm picks up three red wooden blocks and stacks them on a workbench at sunset."
    )
    assert "Low, warm sunlight casts long shadows" in final and "Soft, natural light" not in final
    # Three words longer than the text it was edited from ("red", "at sunset"), not twice it.
    assert len(final.split()) == len(enhanced["robot-blocks_enhanced"].split()) + 3


README = Path(__file__).resolve().parents[1] / "README.md"
_README_BLOCK = re.compile(r"in an 80-column terminal[^\n]*\n\n```text\n(.*?)\n```", re.DOTALL)


def masked(output: str) -> list[str]:
    """The output's lines without what differs from run to run: ids, times, the data dir."""
    text = re.sub(r"\b(ps|rs)_[0-9a-f]{32}\b", r"\1_<id>", output)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "<time>", text)
    text = re.sub(r"(?m)^(Demo on the embedded database 'cosmos_demo' in ).*$", r"\1<dir>", text)
    return [line.rstrip() for line in text.strip().splitlines()]


def test_the_readme_shows_the_demo_as_it_prints_at_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.delenv("COSMOS_MONGO_DATABASE", raising=False)
    monkeypatch.delenv("COSMOS_MONGO_ENHANCER_BASE_URL", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))
    # What an 80-column terminal shows, colours aside.
    monkeypatch.setattr(cli_module, "console", Console(width=80, color_system=None))
    result = CliRunner().invoke(cli, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    found = _README_BLOCK.search(README.read_text())
    assert found is not None, "README.md has no demo output captured at 80 columns"
    shown = found.group(1)
    assert masked(shown) == masked(result.output), (
        "README.md's demo output differs from what the demo prints at 80 columns: paste it anew"
    )
    repeated = [text for text, count in Counter(sentences(shown)).items() if count > 1]
    assert repeated == [] and doubled_words(shown) == []
