"""Built-in prompts are the paper's strings; clean-up and rendering follow the paper's rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tp_rag.prompts import BUILTIN_PROMPTS, clean_sentence, render, resolve_prompt


def test_builtins_equal_the_papers_prompt_file(shared_dir: Path) -> None:
    """Every built-in template equals ../shared/data/prompts.json (the experiments' strings)."""
    published = json.loads((shared_dir / "data" / "prompts.json").read_text())["templates"]
    assert {name: tuple(templates) for name, templates in published.items()} == BUILTIN_PROMPTS


def test_paper_example_tp_on_and_off() -> None:
    """The issue's PromptEOL example, TP on and TP off."""
    template = BUILTIN_PROMPTS["prompteol"][0]
    assert render(template, "X.", tp=True).text == 'This sentence : <PST> "X." means in one word:"'
    assert render(template, "X.", tp=False).text == 'This sentence : "X." means in one word:"'


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("A man plays", "A man plays."),  # a full stop is appended
        ("Done.", "Done."),
        ("Is it raining?", "Is it raining."),  # final ? becomes .
        ('He said "hi"', "He said 'hi'"),  # ends in a quote: nothing appended; " -> '
        ("It's 'fine'", "It's 'fine'"),
        ("What? Really", "What? Really."),  # only a final ? changes
        ("", ""),
    ],
)
def test_clean_sentence(raw: str, cleaned: str) -> None:
    """Append '.' unless the text ends in . ? " ', replace " with ', a final ? becomes '.'."""
    assert clean_sentence(raw) == cleaned


def test_render_spans_locate_text_and_placeholder() -> None:
    """The character spans point at the sentence and at '<PST>' in the rendered prompt."""
    prompt = render('S : {pst}"{text}" means', "Hello there.", tp=True)
    start, end = prompt.text_span
    assert prompt.text[start:end] == "Hello there."
    assert prompt.placeholder_start is not None
    assert prompt.text[prompt.placeholder_start :].startswith("<PST> ")
    assert render('S : {pst}"{text}"', "x", tp=False).placeholder_start is None


def test_custom_template_with_placeholder_after_text() -> None:
    """A custom template may put {pst} after {text}; the spans still line up."""
    prompt = render('"{text}" then {pst}means:', "abc", tp=True)
    assert prompt.text == '"abc" then <PST> means:'
    assert prompt.text[prompt.placeholder_start : prompt.placeholder_start + 5] == "<PST>"


@pytest.mark.parametrize(
    "template", ["no fields", "only {text}", "only {pst}", "{text}{text}{pst}"]
)
def test_bad_templates_are_refused_with_the_choices(template: str) -> None:
    """A template without exactly one {text} and one {pst} fails, listing the built-in names."""
    with pytest.raises(ValueError, match="ke, metaeol, pcot, prompteol"):
        resolve_prompt(template)
